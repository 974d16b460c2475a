//! Event pattern tests: each matcher, combinations, arrays in events, `$or`, every refusal
//! with its message, and `Rules` against the same patterns matched one by one.

use serde_json::{Value, json};

use super::*;

fn pattern(p: Value) -> Pattern {
    Pattern::parse(&p).unwrap_or_else(|e| panic!("{p} refused: {e}"))
}

/// Asserts each event's match against one pattern.
fn check(p: Value, cases: &[(Value, bool)]) {
    let compiled = pattern(p.clone());
    for (event, expected) in cases {
        assert_eq!(
            compiled.matches(event),
            *expected,
            "pattern {p} against event {event}"
        );
    }
}

fn refused(p: Value) -> String {
    match Pattern::parse(&p) {
        Ok(_) => panic!("{p} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// EventBridge's own sample event.
fn ec2() -> Value {
    json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "111122223333",
        "time": "2017-12-22T18:43:48Z",
        "region": "us-west-1",
        "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}
    })
}

#[test]
fn exact_values_and_across_fields_or_within() {
    check(
        json!({"source": ["aws.ec2", "aws.fargate"], "detail": {"state": ["terminated"]}}),
        &[
            (ec2(), true),
            (
                json!({"source": "aws.fargate", "detail": {"state": "terminated"}}),
                true,
            ),
            (
                json!({"source": "aws.s3", "detail": {"state": "terminated"}}),
                false,
            ),
            (
                json!({"source": "aws.ec2", "detail": {"state": "running"}}),
                false,
            ),
            (json!({"source": "aws.ec2"}), false),
            (json!({"detail": {"state": "terminated"}}), false),
        ],
    );
}

#[test]
fn exact_numbers_compare_as_numbers() {
    check(
        json!({"n": [5], "m": [-1.5e2]}),
        &[
            (json!({"n": 5, "m": -150}), true),
            (json!({"n": 5.0, "m": -150.0}), true),
            (json!({"n": 5.1, "m": -150}), false),
            (json!({"n": "5", "m": -150}), false),
        ],
    );
}

#[test]
fn exact_booleans_null_and_empty_string() {
    check(
        json!({"b": [true], "z": [null], "e": [""]}),
        &[
            (json!({"b": true, "z": null, "e": ""}), true),
            (json!({"b": "true", "z": null, "e": ""}), false),
            (json!({"b": true, "e": ""}), false),
            (json!({"b": true, "z": null, "e": " "}), false),
        ],
    );
}

#[test]
fn strings_are_case_sensitive_and_not_trimmed() {
    check(
        json!({"s": ["Abc"]}),
        &[
            (json!({"s": "Abc"}), true),
            (json!({"s": "abc"}), false),
            (json!({"s": "Abc "}), false),
        ],
    );
}

#[test]
fn prefix_and_prefix_ignoring_case() {
    check(
        json!({"time": [{"prefix": "2017-12-22"}]}),
        &[
            (ec2(), true),
            (json!({"time": "2017-12-23T00:00:00Z"}), false),
            (json!({"time": 2017}), false),
        ],
    );
    check(
        json!({"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}),
        &[
            (json!({"service": "eventbridge"}), true),
            (json!({"service": "EVENTBRIDGE"}), true),
            (json!({"service": "EventB"}), true),
            (json!({"service": "Event"}), false),
            (json!({"service": "sns"}), false),
        ],
    );
    check(
        json!({"s": [{"prefix": ""}]}),
        &[(json!({"s": "anything"}), true), (json!({"s": 1}), false)],
    );
}

#[test]
fn suffix_and_suffix_ignoring_case() {
    check(
        json!({"FileName": [{"suffix": ".png"}]}),
        &[
            (json!({"FileName": "a.png"}), true),
            (json!({"FileName": "a.PNG"}), false),
            (json!({"FileName": "png"}), false),
        ],
    );
    check(
        json!({"FileName": [{"suffix": {"equals-ignore-case": ".PNG"}}]}),
        &[
            (json!({"FileName": "a.png"}), true),
            (json!({"FileName": "A.Png"}), true),
            (json!({"FileName": "a.jpg"}), false),
            (json!({"FileName": "ng"}), false),
        ],
    );
}

#[test]
fn equals_ignore_case_folds_unicode() {
    check(
        json!({"name": [{"equals-ignore-case": "ÄLICE"}]}),
        &[
            (json!({"name": "älice"}), true),
            (json!({"name": "Älice"}), true),
            (json!({"name": "alice"}), false),
            (json!({"name": "älices"}), false),
            (json!({"name": "äli"}), false),
        ],
    );
}

#[test]
fn wildcard_pieces_escapes_and_anchors() {
    check(
        json!({"s": [{"wildcard": "a*b"}]}),
        &[
            (json!({"s": "ab"}), true),
            (json!({"s": "axxb"}), true),
            (json!({"s": "axxbc"}), false),
            (json!({"s": "b"}), false),
        ],
    );
    check(
        json!({"path": [{"wildcard": "*/lib/*.jar"}]}),
        &[
            (json!({"path": "/usr/lib/x.jar"}), true),
            (json!({"path": "/lib/.jar"}), true),
            (json!({"path": "/usr/bin/x.jar"}), false),
        ],
    );
    // `aba*aba` must not let the prefix and the suffix share characters.
    check(
        json!({"s": [{"wildcard": "aba*aba"}]}),
        &[(json!({"s": "aba"}), false), (json!({"s": "abaaba"}), true)],
    );
    check(
        json!({"s": [{"wildcard": "x\\*y\\\\*"}]}),
        &[
            (json!({"s": "x*y\\"}), true),
            (json!({"s": "x*y\\zz"}), true),
            (json!({"s": "xay\\"}), false),
        ],
    );
    check(
        json!({"s": [{"wildcard": "exact"}]}),
        &[
            (json!({"s": "exact"}), true),
            (json!({"s": "exactly"}), false),
        ],
    );
}

#[test]
fn anything_but_values() {
    check(
        json!({"detail": {"state": [{"anything-but": "initializing"}]}}),
        &[
            (ec2(), true),
            (json!({"detail": {"state": "initializing"}}), false),
            // Present, of another type: not the excluded value.
            (json!({"detail": {"state": 3}}), true),
            // Missing: anything-but needs a value.
            (json!({"detail": {}}), false),
        ],
    );
    check(
        json!({"x": [{"anything-but": [100, 200]}]}),
        &[
            (json!({"x": 300}), true),
            (json!({"x": 200.0}), false),
            (json!({"x": 100}), false),
        ],
    );
    check(
        json!({"x": [{"anything-but": ["stopped", "overloaded"]}]}),
        &[
            (json!({"x": "running"}), true),
            (json!({"x": "stopped"}), false),
        ],
    );
}

#[test]
fn anything_but_prefix_suffix_ignore_case_wildcard() {
    check(
        json!({"r": [{"anything-but": {"prefix": "us-"}}]}),
        &[
            (json!({"r": "eu-west-1"}), true),
            (json!({"r": "us-east-1"}), false),
            (json!({"r": 5}), false),
        ],
    );
    check(
        json!({"r": [{"anything-but": {"prefix": ["us-", "ca-"]}}]}),
        &[
            (json!({"r": "ca-central-1"}), false),
            (json!({"r": "ap-1"}), true),
        ],
    );
    check(
        json!({"f": [{"anything-but": {"suffix": [".png", ".jpg"]}}]}),
        &[
            (json!({"f": "a.gif"}), true),
            (json!({"f": "a.jpg"}), false),
        ],
    );
    check(
        json!({"s": [{"anything-but": {"equals-ignore-case": ["Stopped", "OverLoaded"]}}]}),
        &[
            (json!({"s": "STOPPED"}), false),
            (json!({"s": "running"}), true),
        ],
    );
    check(
        json!({"p": [{"anything-but": {"wildcard": "*/bin/*.jar"}}]}),
        &[
            (json!({"p": "/usr/bin/a.jar"}), false),
            (json!({"p": "/usr/lib/a.jar"}), true),
        ],
    );
}

#[test]
fn numeric_ranges_and_equality() {
    check(
        json!({"c": [{"numeric": [">", 0, "<=", 5]}]}),
        &[
            (json!({"c": 0}), false),
            (json!({"c": 0.0001}), true),
            (json!({"c": 5}), true),
            (json!({"c": 5.0}), true),
            (json!({"c": 5.0001}), false),
            (json!({"c": "3"}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"d": [{"numeric": ["<", 10]}], "e": [{"numeric": [">=", -1e3]}]}),
        &[
            (json!({"d": 9.99, "e": -1000}), true),
            (json!({"d": 10, "e": -1000}), false),
            (json!({"d": -5, "e": -1000.5}), false),
        ],
    );
    check(
        json!({"x": [{"numeric": ["=", 3.018e2]}]}),
        &[(json!({"x": 301.8}), true), (json!({"x": 301}), false)],
    );
}

#[test]
fn exists_true_and_false() {
    let present = json!({"detail": {"c-count": [{"exists": true}]}});
    let absent = json!({"detail": {"c-count": [{"exists": false}]}});
    let cases = [
        (json!({"detail": {"c-count": 4}}), true),
        (json!({"detail": {"c-count": null}}), true),
        (json!({"detail": {"c-count": [1]}}), true),
        (json!({"detail": {}}), false),
        (json!({}), false),
        // Only leaves exist: an object or an empty array is no value.
        (json!({"detail": {"c-count": {"c1": 100}}}), false),
        (json!({"detail": {"c-count": []}}), false),
    ];
    check(present, &cases);
    let negated: Vec<_> = cases.iter().map(|(e, m)| (e.clone(), !m)).collect();
    check(absent, &negated);
}

#[test]
fn cidr_v4_v6_and_bare_addresses() {
    check(
        json!({"ip": [{"cidr": "10.0.0.0/24"}]}),
        &[
            (json!({"ip": "10.0.0.255"}), true),
            (json!({"ip": "10.0.1.0"}), false),
            (json!({"ip": "2001:db8::1"}), false),
            (json!({"ip": "not an ip"}), false),
            (json!({"ip": 10}), false),
        ],
    );
    check(
        json!({"ip": [{"cidr": "2001:db8::/32"}]}),
        &[
            (json!({"ip": "2001:db8:ffff::1"}), true),
            (json!({"ip": "2001:db9::1"}), false),
        ],
    );
    check(
        json!({"ip": [{"cidr": "192.168.1.7"}]}),
        &[
            (json!({"ip": "192.168.1.7"}), true),
            (json!({"ip": "192.168.1.8"}), false),
        ],
    );
    // Host bits in the pattern are ignored; /0 is everything of the family.
    check(
        json!({"ip": [{"cidr": "10.1.2.3/8"}, {"cidr": "::/0"}]}),
        &[
            (json!({"ip": "10.200.0.1"}), true),
            (json!({"ip": "fe80::1"}), true),
            (json!({"ip": "11.0.0.1"}), false),
        ],
    );
}

#[test]
fn event_arrays_match_when_any_element_does() {
    check(
        json!({"resources": ["arn:b", "arn:z"]}),
        &[
            (json!({"resources": ["arn:a", "arn:b"]}), true),
            (json!({"resources": ["arn:a"]}), false),
            (json!({"resources": []}), false),
            (json!({"resources": [["arn:z"]]}), true),
        ],
    );
    check(
        json!({"n": [{"numeric": [">", 10]}], "s": [{"anything-but": "x"}]}),
        &[
            (json!({"n": [1, 20], "s": ["x", "y"]}), true),
            (json!({"n": [1, 2], "s": ["y"]}), false),
            (json!({"n": [20], "s": ["x"]}), false),
        ],
    );
}

#[test]
fn arrays_of_objects_match_one_element_whole() {
    check(
        json!({"detail": {"items": {"sku": ["a"], "qty": [{"numeric": [">", 1]}]}}}),
        &[
            (
                json!({"detail": {"items": [{"sku": "b", "qty": 5}, {"sku": "a", "qty": 2}]}}),
                true,
            ),
            // sku from one element, qty from another: no single element matches.
            (
                json!({"detail": {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5}]}}),
                false,
            ),
            (json!({"detail": {"items": []}}), false),
        ],
    );
}

#[test]
fn nested_patterns_against_missing_or_scalar_objects() {
    check(
        json!({"detail": {"state": ["on"]}}),
        &[
            (json!({"detail": "on"}), false),
            (json!({"detail": null}), false),
            (json!({}), false),
        ],
    );
    // A nested pattern of only `exists: false` matches when there is nothing there.
    check(
        json!({"detail": {"error": [{"exists": false}]}}),
        &[
            (json!({}), true),
            (json!({"detail": 3}), true),
            (json!({"detail": {"error": "boom"}}), false),
        ],
    );
}

#[test]
fn several_matchers_in_one_array_are_ored() {
    check(
        json!({"s": ["exact", {"prefix": "pre"}, {"numeric": ["=", 7]}, {"exists": false}]}),
        &[
            (json!({"s": "exact"}), true),
            (json!({"s": "prefixed"}), true),
            (json!({"s": 7}), true),
            (json!({}), true),
            (json!({"s": "other"}), false),
        ],
    );
}

#[test]
fn or_at_top_level_nested_and_with_fields() {
    // source && (metricName || namespace)
    check(
        json!({
            "source": ["aws.cloudwatch"],
            "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}]
        }),
        &[
            (
                json!({"source": "aws.cloudwatch", "metricName": "CPUUtilization"}),
                true,
            ),
            (
                json!({"source": "aws.cloudwatch", "namespace": "AWS/EC2"}),
                true,
            ),
            (
                json!({"source": "aws.cloudwatch", "namespace": "AWS/ES"}),
                false,
            ),
            (json!({"source": "aws.s3", "namespace": "AWS/EC2"}), false),
        ],
    );
    // An $or inside a branch, and one inside a nested object.
    check(
        json!({
            "$or": [
                {"a": [1]},
                {"b": [2], "$or": [{"c": [3]}, {"d": [4]}]}
            ],
            "detail": {"$or": [{"x": ["x"]}, {"y": [{"exists": true}]}]}
        }),
        &[
            (json!({"a": 1, "detail": {"x": "x"}}), true),
            (json!({"b": 2, "d": 4, "detail": {"y": 0}}), true),
            (json!({"b": 2, "detail": {"y": 0}}), false),
            (json!({"a": 1, "detail": {}}), false),
        ],
    );
}

#[test]
fn cloudevent_attributes_and_data() {
    check(
        json!({
            "type": [{"prefix": "com.example."}],
            "data": {"price": [{"numeric": [">=", 100]}], "currency": [{"anything-but": "EUR"}]}
        }),
        &[
            (
                json!({"type": "com.example.order", "data": {"price": 120, "currency": "USD"}}),
                true,
            ),
            (
                json!({"type": "com.example.order", "data": {"price": 99, "currency": "USD"}}),
                false,
            ),
            (
                json!({"type": "com.other", "data": {"price": 120, "currency": "USD"}}),
                false,
            ),
        ],
    );
}

#[test]
fn refusals_name_the_path_and_the_problem() {
    let cases = [
        (json!(["a"]), "pattern: must be a JSON object of fields"),
        (
            json!({}),
            "pattern: an empty object matches nothing; name a field",
        ),
        (
            json!({"detail": {}}),
            "detail: an empty object matches nothing; name a field",
        ),
        (
            json!({"source": "aws.ec2"}),
            "source: must be an array of values or an object of fields",
        ),
        (
            json!({"source": []}),
            "source: an empty array matches nothing; give values",
        ),
        (json!({"s": [["a"]]}), "s: values cannot be arrays"),
        (
            json!({"s": [{"prefix": "a", "suffix": "b"}]}),
            "s: a matcher is an object of exactly one of prefix, suffix, equals-ignore-case, \
             wildcard, anything-but, numeric, exists, cidr",
        ),
        (
            json!({"s": [{"contains": "a"}]}),
            "s: unknown matcher \"contains\" (expected one of prefix, suffix, \
             equals-ignore-case, wildcard, anything-but, numeric, exists, cidr)",
        ),
        (
            json!({"s": [{"prefix": 1}]}),
            "s: prefix needs a string or {\"equals-ignore-case\": string}",
        ),
        (
            json!({"s": [{"suffix": {"equals-ignore-case": 1}}]}),
            "s: suffix needs a string or {\"equals-ignore-case\": string}",
        ),
        (
            json!({"s": [{"equals-ignore-case": ["a"]}]}),
            "s: equals-ignore-case needs a string",
        ),
        (
            json!({"s": [{"wildcard": 1}]}),
            "s: wildcard needs a string",
        ),
        (
            json!({"s": [{"wildcard": "a**b"}]}),
            "s: wildcard: consecutive * are not allowed",
        ),
        (
            json!({"s": [{"wildcard": "a\\b"}]}),
            "s: wildcard: a backslash escapes only * or \\",
        ),
        (
            json!({"s": [{"wildcard": "a\\"}]}),
            "s: wildcard: a backslash escapes only * or \\",
        ),
        (
            json!({"s": [{"exists": "yes"}]}),
            "s: exists needs true or false",
        ),
        (
            json!({"s": [{"cidr": 10}]}),
            "s: cidr needs a string such as \"10.0.0.0/24\"",
        ),
        (
            json!({"s": [{"cidr": "10.0.0.0/33"}]}),
            "s: cidr: \"10.0.0.0/33\" is not an IP address or a CIDR block",
        ),
        (
            json!({"s": [{"cidr": "10.0.0/8"}]}),
            "s: cidr: \"10.0.0/8\" is not an IP address or a CIDR block",
        ),
        (
            json!({"detail": {"price": [{"numeric": [">", 0, "<"]}]}}),
            "detail.price: numeric needs pairs of operator and number",
        ),
        (
            json!({"detail": {"price": [{"numeric": [">", "0"]}]}}),
            "detail.price: numeric needs pairs of operator and number",
        ),
        (
            json!({"p": [{"numeric": 5}]}),
            "p: numeric needs pairs of operator and number",
        ),
        (
            json!({"p": [{"numeric": []}]}),
            "p: numeric needs pairs of operator and number",
        ),
        (
            json!({"p": [{"numeric": ["!=", 5]}]}),
            "p: numeric: unknown operator \"!=\" (use =, <, <=, > or >=)",
        ),
        (
            json!({"p": [{"numeric": [">", 1, ">=", 2]}]}),
            "p: numeric: more than one lower bound",
        ),
        (
            json!({"p": [{"numeric": ["<", 1, "<=", 2]}]}),
            "p: numeric: more than one upper bound",
        ),
        (
            json!({"p": [{"numeric": ["=", 1, "<", 2]}]}),
            "p: numeric: \"=\" cannot be combined with other operators",
        ),
        (
            json!({"p": [{"numeric": [">", 5, "<", 5]}]}),
            "p: numeric: the range is empty (lower bound above upper)",
        ),
        (
            json!({"p": [{"numeric": [">", 6, "<", 5]}]}),
            "p: numeric: the range is empty (lower bound above upper)",
        ),
        (
            json!({"s": [{"anything-but": ["a", 1]}]}),
            "s: anything-but lists must be all strings or all numbers",
        ),
        (
            json!({"s": [{"anything-but": []}]}),
            "s: anything-but needs at least one value",
        ),
        (
            json!({"s": [{"anything-but": true}]}),
            "s: anything-but needs a string, a number, a list of strings or of numbers, or \
             {prefix|suffix|equals-ignore-case|wildcard: string or list}",
        ),
        (
            json!({"s": [{"anything-but": {"numeric": [">", 1]}}]}),
            "s: anything-but needs a string, a number, a list of strings or of numbers, or \
             {prefix|suffix|equals-ignore-case|wildcard: string or list}",
        ),
        (
            json!({"s": [{"anything-but": {"prefix": [1]}}]}),
            "s: anything-but needs a string, a number, a list of strings or of numbers, or \
             {prefix|suffix|equals-ignore-case|wildcard: string or list}",
        ),
        (
            json!({"s": [{"anything-but": {"wildcard": "**"}}]}),
            "s: wildcard: consecutive * are not allowed",
        ),
        (
            json!({"$or": {"a": [1]}}),
            "$or: $or needs an array of two or more patterns",
        ),
        (
            json!({"$or": [{"a": [1]}]}),
            "$or: $or needs an array of two or more patterns",
        ),
        (
            json!({"$or": [{"a": [1]}, ["b"]]}),
            "$or[1]: a $or branch must be a pattern object",
        ),
        (
            json!({"detail": {"$or": [{"a": [1]}, {"b": {"c": "d"}}]}}),
            "detail.$or[1].b.c: must be an array of values or an object of fields",
        ),
    ];
    for (p, message) in cases {
        assert_eq!(refused(p.clone()), message, "pattern {p}");
    }
}

#[test]
fn limits_are_enforced_and_named() {
    let big = "x".repeat(limits::EVENT_PATTERN_BYTES_MAX);
    assert_eq!(
        refused(json!({"s": [big]})),
        format!(
            "pattern: {} bytes as JSON, over the limit of {} bytes",
            limits::EVENT_PATTERN_BYTES_MAX + 10,
            limits::EVENT_PATTERN_BYTES_MAX
        )
    );

    let mut deep = json!({"leaf": [1]});
    for _ in 0..limits::EVENT_PATTERN_DEPTH_MAX {
        deep = json!({"d": deep});
    }
    let message = refused(deep);
    assert!(
        message.ends_with(&format!(
            ": nested deeper than the limit of {} levels",
            limits::EVENT_PATTERN_DEPTH_MAX
        )),
        "{message}"
    );
    let mut ok = json!({"leaf": [1]});
    for _ in 0..limits::EVENT_PATTERN_DEPTH_MAX - 1 {
        ok = json!({"d": ok});
    }
    pattern(ok);

    let values: Vec<u32> = (0..=limits::EVENT_PATTERN_VALUES_MAX as u32).collect();
    assert_eq!(
        refused(json!({"n": values})),
        format!(
            "n: {} values, over the limit of {}",
            limits::EVENT_PATTERN_VALUES_MAX + 1,
            limits::EVENT_PATTERN_VALUES_MAX
        )
    );
    assert_eq!(
        refused(json!({"n": [{"anything-but": values}]})),
        format!(
            "n: anything-but has {} values, over the limit of {}",
            limits::EVENT_PATTERN_VALUES_MAX + 1,
            limits::EVENT_PATTERN_VALUES_MAX
        )
    );

    let branches: Vec<Value> = (0..=limits::EVENT_PATTERN_OR_BRANCHES_MAX)
        .map(|i| json!({"n": [i]}))
        .collect();
    assert_eq!(
        refused(json!({"$or": branches})),
        format!(
            "$or: {} branches, over the limit of {}",
            limits::EVENT_PATTERN_OR_BRANCHES_MAX + 1,
            limits::EVENT_PATTERN_OR_BRANCHES_MAX
        )
    );
}

/// Rules of every kind: filed by `source`, `detail-type` or `type`, and not filed.
fn mixed_rules() -> Vec<(RuleId, Pattern)> {
    [
        json!({"source": ["a"]}),
        json!({"source": ["a", "b"], "detail": {"n": [{"numeric": [">", 5]}]}}),
        json!({"source": ["b", "b"]}),
        json!({"detail-type": ["created"]}),
        json!({"type": ["com.example.x"], "source": [{"prefix": "a"}]}),
        json!({"source": [{"prefix": "a"}]}),
        json!({"detail": {"n": [{"numeric": ["<", 3]}]}}),
        json!({"$or": [{"source": ["a"]}, {"type": ["t"]}]}),
        json!({"source": [{"exists": false}]}),
        json!({"source": ["a", {"prefix": "z"}]}),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, p)| (RuleId(i as u32 * 10), pattern(p)))
    .collect()
}

#[test]
fn rules_agree_with_matching_each_pattern() {
    let list = mixed_rules();
    let rules = Rules::new(list.clone());
    assert_eq!(rules.len(), 10);
    let events = [
        json!({"source": "a"}),
        json!({"source": "a", "detail": {"n": 9}}),
        json!({"source": "b", "detail": {"n": 1}}),
        json!({"source": ["a", "b"], "detail": {"n": 9}}),
        json!({"source": ["b", "a", "b"]}),
        json!({"source": [["a"]]}),
        json!({"source": "zz", "detail-type": "created"}),
        json!({"source": "ab", "type": "com.example.x"}),
        json!({"type": "t"}),
        json!({"source": 5}),
        json!({}),
        json!("not an object"),
    ];
    for event in events {
        let expected: Vec<RuleId> = list
            .iter()
            .filter(|(_, p)| p.matches(&event))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(rules.matching(&event), expected, "event {event}");
        let mut each = Vec::new();
        rules.for_each_match(&event, |id| each.push(id));
        each.sort();
        assert_eq!(each, expected, "event {event} (for_each_match)");
    }
}

#[test]
fn rules_index_by_the_first_exact_field() {
    let rules = Rules::new(mixed_rules());
    // Rules 0, 1, 2 by source; 3 by detail-type; 4 by type; the others unfiled.
    let filed: Vec<Vec<u32>> = rules.index.iter().map(|fi| fi.all.clone()).collect();
    assert_eq!(filed, [vec![0, 1, 2], vec![3], vec![4]]);
    assert_eq!(rules.unindexed, [5, 6, 7, 8, 9]);
    assert_eq!(rules.index[0].by_value["b"], [1, 2]);
    assert!(Rules::new(Vec::new()).is_empty());
}
