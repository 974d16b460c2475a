//! CloudEvents codec tests, on the spec's own examples (JSON format 1.0.2 §3.2 and §4.3,
//! HTTP binding §3.1.3.2 and §3.1.4) and every refusal with its message.

use serde_json::{Value, json};

use super::*;

fn structured(v: Value) -> Result<CloudEvent, EventError> {
    CloudEvent::from_structured(&serde_json::to_vec(&v).unwrap())
}

fn message(result: Result<impl fmt::Debug, EventError>) -> String {
    result.expect_err("refused").to_string()
}

fn spec_json_example() -> Value {
    json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "subject": null,
        "id" : "C234-1234-1234",
        "time" : "2018-04-05T17:31:00Z",
        "comexampleextension1" : "value",
        "comexampleothervalue" : 5,
        "datacontenttype" : "application/json",
        "data" : {"appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true}
    })
}

#[test]
fn structured_spec_example_with_json_data() {
    let event = structured(spec_json_example()).unwrap();
    assert_eq!(event.id, "C234-1234-1234");
    assert_eq!(event.source, "/mycontext");
    assert_eq!(event.ty, "com.example.someevent");
    assert_eq!(event.subject, None, "null is absent");
    assert_eq!(event.time.as_deref(), Some("2018-04-05T17:31:00Z"));
    assert_eq!(event.extensions["comexampleextension1"], json!("value"));
    assert_eq!(event.extensions["comexampleothervalue"], json!(5));
    assert_eq!(
        event.data,
        Some(Data::Json(
            json!({"appinfoA": "abc", "appinfoB": 123, "appinfoC": true})
        ))
    );
    // Written back, it is the example without its null.
    let mut expected = spec_json_example();
    expected.as_object_mut().unwrap().remove("subject");
    assert_eq!(event.to_json(), expected);
    assert_eq!(
        CloudEvent::from_structured(&event.to_structured()).unwrap(),
        event
    );
}

#[test]
fn structured_spec_examples_with_binary_and_text_data() {
    let binary = structured(json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "id" : "A234-1234-1234",
        "datacontenttype" : "application/vnd.apache.thrift.binary",
        "data_base64" : "AAEC/w=="
    }))
    .unwrap();
    assert_eq!(binary.data, Some(Data::Binary(vec![0, 1, 2, 255])));
    assert_eq!(binary.to_json()["data_base64"], json!("AAEC/w=="));
    assert!(binary.to_json().get("data").is_none());

    let xml = structured(json!({
        "specversion" : "1.0",
        "type" : "com.example.someevent",
        "source" : "/mycontext",
        "id" : "B234-1234-1234",
        "unsetextension": null,
        "datacontenttype" : "application/xml",
        "data" : "<much wow=\"xml\"/>"
    }))
    .unwrap();
    assert_eq!(xml.data, Some(Data::Text("<much wow=\"xml\"/>".into())));
    assert!(xml.extensions.is_empty(), "a null extension is absent");
    assert_eq!(xml.to_json()["data"], json!("<much wow=\"xml\"/>"));
}

#[test]
fn structured_data_without_content_type_is_json_even_a_string_or_null() {
    let minimal = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"});
    let mut with = minimal.clone();
    with["data"] = json!("{\"not\": \"parsed\"}");
    assert_eq!(
        structured(with).unwrap().data,
        Some(Data::Json(json!("{\"not\": \"parsed\"}")))
    );
    let mut null = minimal.clone();
    null["data"] = Value::Null;
    assert_eq!(
        structured(null).unwrap().data,
        Some(Data::Json(Value::Null))
    );
    let mut plus_json = minimal.clone();
    plus_json["datacontenttype"] = json!("application/cloudevents+json; charset=utf-8");
    plus_json["data"] = json!([1]);
    assert_eq!(
        structured(plus_json).unwrap().data,
        Some(Data::Json(json!([1])))
    );
    assert_eq!(structured(minimal).unwrap().data, None);
}

#[test]
fn structured_refusals_name_the_attribute() {
    let base = || json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
    let with = |key: &str, value: Value| {
        let mut v = base();
        v[key] = value;
        v
    };
    let without = |key: &str| {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    let cases = [
        (
            without("specversion"),
            "specversion: missing (it is required)",
        ),
        (
            with("specversion", json!("0.3")),
            "specversion: must be \"1.0\", not \"0.3\"",
        ),
        (
            with("specversion", json!(1.0)),
            "specversion: must be a string",
        ),
        (without("id"), "id: missing (it is required)"),
        (with("id", json!("")), "id: must not be empty"),
        (with("id", json!(7)), "id: must be a string"),
        (without("source"), "source: missing (it is required)"),
        (
            with("source", json!("/has space")),
            "source: must be a URI-reference (no spaces or control characters)",
        ),
        (without("type"), "type: missing (it is required)"),
        (with("type", json!("")), "type: must not be empty"),
        (with("subject", json!("")), "subject: must not be empty"),
        (
            with("time", json!("2018-04-05 17:31:00")),
            "time: \"2018-04-05 17:31:00\" is not an RFC 3339 timestamp (2018-04-05T17:31:00Z)",
        ),
        (
            with("time", json!("2023-02-29T00:00:00Z")),
            "time: \"2023-02-29T00:00:00Z\" is not an RFC 3339 timestamp (2018-04-05T17:31:00Z)",
        ),
        (
            with("dataschema", json!("/relative")),
            "dataschema: must be an absolute URI (scheme:...)",
        ),
        (
            with("datacontenttype", json!("json")),
            "datacontenttype: \"json\" is not a media type (type/subtype)",
        ),
        (
            with("Upper", json!("x")),
            "Upper: an extension name must be 1 to 20 lower-case letters or digits",
        ),
        (
            with("with_underscore", json!("x")),
            "with_underscore: an extension name must be 1 to 20 lower-case letters or digits",
        ),
        (
            with("abcdefghijklmnopqrstu", json!("x")),
            "abcdefghijklmnopqrstu: an extension name must be 1 to 20 lower-case letters or digits",
        ),
        (
            with("ext", json!({"a": 1})),
            "ext: an extension's value must be a string, a 32-bit integer or a boolean",
        ),
        (
            with("ext", json!(1.5)),
            "ext: an extension's value must be a string, a 32-bit integer or a boolean",
        ),
        (
            with("ext", json!(3_000_000_000u64)),
            "ext: an extension's value must be a string, a 32-bit integer or a boolean",
        ),
        (
            {
                let mut v = with("data", json!(1));
                v["data_base64"] = json!("AA==");
                v
            },
            "data_base64: data and data_base64 cannot both be present",
        ),
        (
            with("data_base64", json!("not base64!")),
            "data_base64: must be a string of base64",
        ),
        (
            {
                let mut v = with("datacontenttype", json!("text/plain"));
                v["data"] = json!({"a": 1});
                v
            },
            "data: must be a string: datacontenttype text/plain is not JSON",
        ),
    ];
    for (event, expected) in cases {
        assert_eq!(
            message(structured(event.clone())),
            expected,
            "event {event}"
        );
    }
    // 20 characters is the longest name allowed.
    structured(with("abcdefghijklmnopqrst", json!(true))).unwrap();
    assert_eq!(
        message(CloudEvent::from_structured(b"{not json")),
        "the event is not valid JSON: key must be a string at line 1 column 2"
    );
    assert_eq!(
        message(structured(json!([1]))),
        "an event must be a JSON object"
    );
}

#[test]
fn event_size_is_limited() {
    let mut event = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"});
    event["data"] = json!("x".repeat(limits::EVENT_BYTES_MAX));
    let body = serde_json::to_vec(&event).unwrap();
    assert_eq!(
        message(CloudEvent::from_structured(&body)),
        format!(
            "the event is {} bytes, over the limit of {} bytes",
            body.len(),
            limits::EVENT_BYTES_MAX
        )
    );
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "s"),
        ("ce-type", "t"),
    ];
    let big = vec![b'x'; limits::EVENT_BYTES_MAX];
    assert!(matches!(
        CloudEvent::from_binary(&headers, &big),
        Err(EventError::TooLarge { .. })
    ));
    let fits = vec![b'x'; limits::EVENT_BYTES_MAX - 100];
    CloudEvent::from_binary(&headers, &fits).unwrap();
}

#[test]
fn batch_spec_example_and_its_errors() {
    let batch = json!([
        {
            "specversion" : "1.0",
            "type" : "com.example.someevent",
            "source" : "/mycontext/4",
            "id" : "B234-1234-1234",
            "time" : "2018-04-05T17:31:00Z",
            "comexampleextension1" : "value",
            "comexampleothervalue" : 5,
            "datacontenttype" : "application/vnd.apache.thrift.binary",
            "data_base64" : "AAEC"
        },
        {
            "specversion" : "1.0",
            "type" : "com.example.someotherevent",
            "source" : "/mycontext/9",
            "id" : "C234-1234-1234",
            "time" : "2018-04-05T17:31:05Z",
            "comexampleextension1" : "value",
            "comexampleothervalue" : 5,
            "datacontenttype" : "application/json",
            "data" : {"appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true}
        }
    ]);
    let events = CloudEvent::from_batch(&serde_json::to_vec(&batch).unwrap()).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data, Some(Data::Binary(vec![0, 1, 2])));
    assert_eq!(events[1].ty, "com.example.someotherevent");
    assert!(CloudEvent::from_batch(b"[]").unwrap().is_empty());

    let bad = json!([batch[0], {"specversion": "1.0", "source": "s", "type": "t"}]);
    assert_eq!(
        message(CloudEvent::from_batch(&serde_json::to_vec(&bad).unwrap())),
        "event [1]: id: missing (it is required)"
    );
    assert_eq!(
        message(CloudEvent::from_batch(b"{\"a\": 1}")),
        "a batch must be a JSON array of events"
    );
    let too_many = Value::Array(vec![batch[1].clone(); limits::EVENT_BATCH_MAX + 1]);
    assert_eq!(
        message(CloudEvent::from_batch(
            &serde_json::to_vec(&too_many).unwrap()
        )),
        format!(
            "{} events in one batch, over the limit of {}",
            limits::EVENT_BATCH_MAX + 1,
            limits::EVENT_BATCH_MAX
        )
    );
    let mut huge = batch[1].clone();
    huge["data"] = json!("x".repeat(limits::EVENT_BYTES_MAX));
    let err = CloudEvent::from_batch(&serde_json::to_vec(&json!([huge])).unwrap()).unwrap_err();
    assert!(
        matches!(&err, EventError::InBatch { index: 0, error } if matches!(**error, EventError::TooLarge { .. })),
        "{err:?}"
    );
}

#[test]
fn binary_spec_example_json_body() {
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.someevent"),
        ("ce-time", "2018-04-05T03:56:24Z"),
        ("ce-id", "1234-1234-1234"),
        ("ce-source", "/mycontext/subcontext"),
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", "17"),
        ("Host", "webhook.example.com"),
    ];
    let event = CloudEvent::from_binary(&headers, br#"{"a": [1, 2, 3]}"#).unwrap();
    assert_eq!(event.id, "1234-1234-1234");
    assert_eq!(event.source, "/mycontext/subcontext");
    assert_eq!(event.time.as_deref(), Some("2018-04-05T03:56:24Z"));
    assert_eq!(
        event.datacontenttype.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(event.data, Some(Data::Json(json!({"a": [1, 2, 3]}))));
    assert!(
        event.extensions.is_empty(),
        "content-length and host are not attributes"
    );
}

#[test]
fn binary_spec_examples_thrift_and_xml_bodies() {
    let headers = |ct: &'static str| {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-source", "/mycontext"),
            ("ce-id", "A234-1234-1234"),
            ("ce-comexampleextension1", "value"),
            ("ce-comexampleothervalue", "5"),
            ("content-type", ct),
        ]
    };
    let thrift = CloudEvent::from_binary(
        &headers("application/vnd.apache.thrift.binary"),
        &[0, 159, 146],
    )
    .unwrap();
    assert_eq!(thrift.data, Some(Data::Binary(vec![0, 159, 146])));
    // Headers carry no types: the extension is the string "5".
    assert_eq!(thrift.extensions["comexampleothervalue"], json!("5"));
    let json = thrift.to_json();
    assert_eq!(json["data_base64"], json!("AJ+S"));
    assert_eq!(
        json["datacontenttype"],
        json!("application/vnd.apache.thrift.binary")
    );

    let xml = CloudEvent::from_binary(&headers("application/xml"), b"<much wow=\"xml\"/>").unwrap();
    assert_eq!(xml.data, Some(Data::Text("<much wow=\"xml\"/>".into())));
    let none = CloudEvent::from_binary(&headers("text/plain"), b"").unwrap();
    assert_eq!(none.data, None);
    let untyped =
        CloudEvent::from_binary(&headers("application/octet-stream")[..6], b"raw").unwrap();
    assert_eq!(untyped.datacontenttype, None);
    assert_eq!(untyped.data, Some(Data::Binary(b"raw".to_vec())));
}

#[test]
fn binary_header_values_are_unquoted_and_percent_decoded() {
    let headers: [(&str, &[u8]); 6] = [
        ("CE-SpecVersion", b"1.0"),
        ("ce-id", b" 1 "),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
        ("ce-subject", b"Euro%20%E2%82%AC%20%f0%9f%98%80"),
        ("ce-quoted", b"\"a \\\"b\\\" %41\""),
    ];
    let event = CloudEvent::from_binary(&headers, b"").unwrap();
    assert_eq!(event.id, "1");
    assert_eq!(event.subject.as_deref(), Some("Euro € 😀"));
    assert_eq!(event.extensions["quoted"], json!("a \"b\" A"));
}

#[test]
fn binary_refusals_name_the_header() {
    let base = || {
        vec![
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", "1".to_owned()),
            ("ce-source", "/s".to_owned()),
            ("ce-type", "t".to_owned()),
        ]
    };
    let with = |name: &'static str, value: &str| {
        let mut h = base();
        h.push((name, value.to_owned()));
        h
    };
    let without = |name: &str| {
        let mut h = base();
        h.retain(|(n, _)| *n != name);
        h
    };
    let cases = [
        (
            without("ce-specversion"),
            "ce-specversion: missing (it is required)",
        ),
        (without("ce-source"), "ce-source: missing (it is required)"),
        (
            {
                let mut h = without("ce-specversion");
                h.push(("ce-specversion", "0.3".into()));
                h
            },
            "ce-specversion: must be \"1.0\", not \"0.3\"",
        ),
        (
            {
                let mut h = without("ce-id");
                h.push(("ce-id", String::new()));
                h
            },
            "ce-id: must not be empty",
        ),
        (
            with("ce-time", "yesterday"),
            "ce-time: \"yesterday\" is not an RFC 3339 timestamp (2018-04-05T17:31:00Z)",
        ),
        (
            with("ce-subject", "50%"),
            "ce-subject: has a % not followed by two hex digits",
        ),
        (
            with("ce-subject", "%zz"),
            "ce-subject: has a % not followed by two hex digits",
        ),
        (
            with("ce-subject", "%C0%A0"),
            "ce-subject: is not UTF-8 once percent-decoded",
        ),
        (with("ce-id", "2"), "ce-id: appears more than once"),
        (
            with("ce-datacontenttype", "application/json"),
            "ce-datacontenttype: binary mode carries the data's type in content-type",
        ),
        (
            with("ce-data", "x"),
            "ce-data: is not an attribute (data is the body)",
        ),
        (
            with("ce-bad_name", "x"),
            "ce-bad_name: an extension name must be 1 to 20 lower-case letters or digits",
        ),
    ];
    for (headers, expected) in cases {
        assert_eq!(
            message(CloudEvent::from_binary(&headers, b"")),
            expected,
            "headers {headers:?}"
        );
    }
    assert_eq!(
        message(CloudEvent::from_binary(
            &with("content-type", "application/json"),
            b"{oops"
        )),
        "data: the body is not valid JSON (application/json): key must be a string at line 1 column 2"
    );
}

#[test]
fn from_http_picks_the_mode_by_content_type() {
    let one = serde_json::to_vec(&spec_json_example()).unwrap();
    let events = CloudEvent::from_http(
        &[(
            "Content-Type",
            "application/cloudevents+json; charset=UTF-8",
        )],
        &one,
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    let batch = serde_json::to_vec(&json!([spec_json_example(), spec_json_example()])).unwrap();
    let events = CloudEvent::from_http(
        &[("content-type", "application/cloudevents-batch+json")],
        &batch,
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("content-type", "application/json"),
    ];
    assert_eq!(CloudEvent::from_http(&binary, b"{}").unwrap().len(), 1);
    assert_eq!(
        message(CloudEvent::from_http(
            &[("content-type", "application/cloudevents+avro")],
            b""
        )),
        "event format application/cloudevents+avro is not supported (use application/cloudevents+json)"
    );
    assert_eq!(
        message(CloudEvent::from_http(
            &[("content-type", "application/json")],
            b"{}"
        )),
        "not a CloudEvent: the content type is not application/cloudevents+json or \
         application/cloudevents-batch+json, and there is no ce-specversion header"
    );
}

#[test]
fn matching_view_has_attributes_extensions_and_json_data_only() {
    let event = structured(spec_json_example()).unwrap();
    assert_eq!(
        event.matching_view(),
        json!({
            "specversion": "1.0",
            "id": "C234-1234-1234",
            "source": "/mycontext",
            "type": "com.example.someevent",
            "time": "2018-04-05T17:31:00Z",
            "datacontenttype": "application/json",
            "comexampleextension1": "value",
            "comexampleothervalue": 5,
            "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}
        })
    );
    let mut text = event.clone();
    text.data = Some(Data::Text("hello".into()));
    assert!(text.matching_view().get("data").is_none());

    let pattern = crate::bus::Pattern::parse(&json!({
        "type": [{"prefix": "com.example."}],
        "comexampleothervalue": [{"numeric": [">", 1]}],
        "data": {"appinfoB": [123]}
    }))
    .unwrap();
    assert!(pattern.matches(&event.matching_view()));
}

#[test]
fn new_events_serialize_with_specversion() {
    let mut event = CloudEvent::new("id-1", "nimbus/timer", "com.nimbus.timer.fired");
    event.time = Some("2024-01-01T00:00:00Z".into());
    event.data = Some(Data::Json(json!({"k": 1})));
    assert_eq!(
        event.to_json(),
        json!({
            "specversion": "1.0",
            "id": "id-1",
            "source": "nimbus/timer",
            "type": "com.nimbus.timer.fired",
            "time": "2024-01-01T00:00:00Z",
            "data": {"k": 1}
        })
    );
}

#[test]
fn rfc3339_timestamps() {
    for ok in [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00z",
        "1985-04-12T23:20:50.52Z",
        "1996-12-19T16:39:57-08:00",
        "1990-12-31T23:59:60Z",
        "2024-02-29T00:00:00+05:30",
        "2000-02-29T00:00:00.000000001Z",
    ] {
        assert!(is_rfc3339(ok), "{ok}");
    }
    for bad in [
        "2018-04-05",
        "2018-04-05T17:31Z",
        "2018-04-05 17:31:00Z",
        "2018-04-05T17:31:00",
        "2018-13-05T17:31:00Z",
        "2018-04-31T17:31:00Z",
        "1900-02-29T00:00:00Z",
        "2018-04-05T24:00:00Z",
        "2018-04-05T17:31:00.Z",
        "2018-04-05T17:31:00+0800",
        "2018-04-05T17:31:00+24:00",
        "2018-04-05T17:31:00Zjunk",
        "２018-04-05T17:31:00Z",
    ] {
        assert!(!is_rfc3339(bad), "{bad}");
    }
}

#[test]
fn epoch_seconds_format_as_eventbridge_time() {
    assert_eq!(format_epoch_seconds(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_epoch_seconds(1_513_968_228), "2017-12-22T18:43:48Z");
    assert_eq!(format_epoch_seconds(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(
        format_epoch_seconds(253_402_300_799),
        "9999-12-31T23:59:59Z"
    );
}

#[test]
fn put_events_entry_to_the_delivered_event() {
    let entry = PutEventsEntry::parse(&json!({
        "Source": "com.mycompany.myapp",
        "DetailType": "myDetailType",
        "Detail": "{ \"key1\": \"value1\", \"key2\": \"value2\" }",
        "Resources": ["resource1", "resource2"],
        "Time": 1_513_968_228,
        "EventBusName": "default"
    }))
    .unwrap();
    assert_eq!(entry.event_bus_name.as_deref(), Some("default"));
    assert_eq!(
        entry.to_event("6a7e8feb", "111122223333", "local", "2030-01-01T00:00:00Z"),
        json!({
            "version": "0",
            "id": "6a7e8feb",
            "detail-type": "myDetailType",
            "source": "com.mycompany.myapp",
            "account": "111122223333",
            "time": "2017-12-22T18:43:48Z",
            "region": "local",
            "resources": ["resource1", "resource2"],
            "detail": {"key1": "value1", "key2": "value2"}
        })
    );
    let untimed = PutEventsEntry::parse(&json!({
        "Source": "s", "DetailType": "d", "Detail": "{}", "Time": "2018-04-05T17:31:00Z"
    }))
    .unwrap();
    assert_eq!(
        untimed.to_event("i", "a", "r", "now")["time"],
        json!("2018-04-05T17:31:00Z")
    );
    let now =
        PutEventsEntry::parse(&json!({"Source": "s", "DetailType": "d", "Detail": "{}"})).unwrap();
    let event = now.to_event("i", "a", "r", "2030-01-01T00:00:00Z");
    assert_eq!(event["time"], json!("2030-01-01T00:00:00Z"));
    assert_eq!(event["resources"], json!([]));
}

#[test]
fn put_events_refusals_name_the_field() {
    let base = || json!({"Source": "s", "DetailType": "d", "Detail": "{\"a\": 1}"});
    let with = |key: &str, value: Value| {
        let mut v = base();
        v[key] = value;
        v
    };
    let without = |key: &str| {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    let cases = [
        (without("Source"), "Source: missing (it is required)"),
        (
            without("DetailType"),
            "DetailType: missing (it is required)",
        ),
        (without("Detail"), "Detail: missing (it is required)"),
        (with("Source", json!("")), "Source: must not be empty"),
        (with("Detail", json!({"a": 1})), "Detail: must be a string"),
        (
            with("Detail", json!("{oops")),
            "Detail: is not valid JSON: key must be a string at line 1 column 2",
        ),
        (
            with("Detail", json!("[1]")),
            "Detail: must be a JSON object",
        ),
        (
            with("Resources", json!("arn")),
            "Resources: must be an array of strings",
        ),
        (
            with("Resources", json!([1])),
            "Resources: must be an array of strings",
        ),
        (
            with("Time", json!(-1)),
            "Time: seconds since the epoch out of range",
        ),
        (
            with("Time", json!("yesterday")),
            "Time: must be seconds since the epoch or an RFC 3339 timestamp",
        ),
        (
            with("EventBusName", json!(5)),
            "EventBusName: must be a string",
        ),
    ];
    for (entry, expected) in cases {
        assert_eq!(
            message(PutEventsEntry::parse(&entry)),
            expected,
            "entry {entry}"
        );
    }
    let detail = format!("{{\"x\": \"{}\"}}", "y".repeat(limits::EVENT_BYTES_MAX));
    assert!(matches!(
        PutEventsEntry::parse(&with("Detail", json!(detail))),
        Err(EventError::TooLarge { .. })
    ));
}

#[test]
fn put_events_request_fails_entries_one_by_one() {
    let body = json!({"Entries": [
        {"Source": "s", "DetailType": "d", "Detail": "{}"},
        {"Source": "s", "DetailType": "d"}
    ]});
    let entries = PutEventsEntry::parse_request(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert!(entries[0].is_ok());
    assert_eq!(
        entries[1].as_ref().unwrap_err().to_string(),
        "Detail: missing (it is required)"
    );
    assert_eq!(
        message(PutEventsEntry::parse_request(b"{}")),
        "a PutEvents request needs Entries, an array of entries"
    );
    assert_eq!(
        message(PutEventsEntry::parse_request(b"{\"Entries\": []}")),
        "Entries is empty"
    );
    let many = json!({"Entries": vec![body["Entries"][0].clone(); limits::EVENT_BATCH_MAX + 1]});
    assert!(matches!(
        PutEventsEntry::parse_request(&serde_json::to_vec(&many).unwrap()),
        Err(EventError::TooMany { .. })
    ));
}
