//! Static websites end to end: a bucket made a website with the AWS CLI (`aws s3 website`)
//! and with `nimbus bucket website`, served by the gateway for `{bucket}.localhost`; and
//! `nimbus bucket create|ls|rm|website` with their refusals.

use crate::harness::Server;
use crate::s3::{aws, ok};

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A request to the website of `host` on the server's main listener.
fn site(
    server: &Server,
    method: reqwest::Method,
    host: &str,
    path: &str,
) -> reqwest::RequestBuilder {
    client()
        .request(method, server.url(path))
        .header("host", host)
}

#[tokio::test]
async fn aws_s3_website_is_served_with_index_error_page_conditions_ranges_and_redirects() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let files = tmp.path().join("site");
    std::fs::create_dir_all(files.join("docs")).unwrap();
    std::fs::write(files.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(files.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(files.join("404.html"), "<h1>not here</h1>").unwrap();
    let css = "body { color: black }\n".repeat(100);
    std::fs::write(files.join("app.css"), &css).unwrap();

    ok(aws(&server, &["s3", "mb", "s3://site"]), "mb");
    ok(
        aws(
            &server,
            &["s3", "sync", files.to_str().unwrap(), "s3://site"],
        ),
        "sync",
    );
    let host = "site.localhost";
    // Not a website yet: S3's website error page.
    let res = site(&server, reqwest::Method::GET, host, "/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("NoSuchWebsiteConfiguration")
    );
    let none = aws(
        &server,
        &["s3api", "get-bucket-website", "--bucket", "site"],
    );
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("NoSuchWebsiteConfiguration"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    ok(
        aws(
            &server,
            &[
                "s3",
                "website",
                "s3://site",
                "--index-document",
                "index.html",
                "--error-document",
                "404.html",
            ],
        ),
        "website",
    );
    let config: serde_json::Value = serde_json::from_str(&ok(
        aws(
            &server,
            &["s3api", "get-bucket-website", "--bucket", "site"],
        ),
        "get-bucket-website",
    ))
    .unwrap();
    assert_eq!(config["IndexDocument"]["Suffix"], "index.html", "{config}");
    assert_eq!(config["ErrorDocument"]["Key"], "404.html", "{config}");

    // The index for `/` and `dir/`, with a port in the host and without.
    for (host, path, body) in [
        ("site.localhost", "/", "<h1>home</h1>"),
        ("site.localhost:7700", "/", "<h1>home</h1>"),
        (host, "/docs/", "<h1>docs</h1>"),
        (host, "/index.html?v=1", "<h1>home</h1>"),
    ] {
        let res = site(&server, reqwest::Method::GET, host, path)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{host}{path}");
        assert_eq!(res.headers()["content-type"], "text/html", "{host}{path}");
        assert_eq!(res.text().await.unwrap(), body, "{host}{path}");
    }
    // A directory without its slash: 302 to it, as S3's website endpoints answer.
    let res = site(&server, reqwest::Method::GET, host, "/docs")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "/docs/");
    // A missing key: the error document, with 404.
    let res = site(&server, reqwest::Method::GET, host, "/no/such/page")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "<h1>not here</h1>");

    // ETag and If-None-Match.
    let res = site(&server, reqwest::Method::GET, host, "/app.css")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/css");
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(res.text().await.unwrap(), css);
    let res = site(&server, reqwest::Method::GET, host, "/app.css")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert!(res.bytes().await.unwrap().is_empty());

    // Ranges: 206 with the bytes, 416 past the end.
    let res = site(&server, reqwest::Method::GET, host, "/app.css")
        .header("range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.headers()["content-range"].to_str().unwrap(),
        format!("bytes 5-9/{}", css.len())
    );
    assert_eq!(res.text().await.unwrap(), &css[5..10]);
    let res = site(&server, reqwest::Method::GET, host, "/app.css")
        .header("range", format!("bytes={}-", css.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 416);

    // HEAD: the headers, no body.
    let res = site(&server, reqwest::Method::HEAD, host, "/app.css")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-length"].to_str().unwrap(),
        css.len().to_string()
    );
    assert!(res.bytes().await.unwrap().is_empty());
    // Only GET and HEAD.
    let res = site(&server, reqwest::Method::POST, host, "/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    // A host naming no bucket.
    let res = site(&server, reqwest::Method::GET, "ghost.localhost", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.text().await.unwrap().contains("NoSuchBucket"));

    // Removed with the AWS CLI: no longer served.
    ok(
        aws(
            &server,
            &["s3api", "delete-bucket-website", "--bucket", "site"],
        ),
        "delete-bucket-website",
    );
    let res = site(&server, reqwest::Method::GET, host, "/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("NoSuchWebsiteConfiguration")
    );
}

#[tokio::test]
async fn nimbus_bucket_makes_lists_serves_and_removes_buckets_and_refuses_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));

    let run = server.cli(&["bucket", "create", "docs"]).await;
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, "created bucket docs"),
        "{}",
        run.stderr
    );
    for (args, expect) in [
        (&["bucket", "create", "Bad_Name"][..], "lowercase letters"),
        (&["bucket", "create", "docs"][..], "bucket_exists"),
        (&["bucket", "rm", "ghost"][..], "bucket_not_found"),
        (&["bucket", "ls", "ghost"][..], "bucket_not_found"),
        (
            &["bucket", "website", "ghost", "--index", "index.html"][..],
            "bucket_not_found",
        ),
        (
            &["bucket", "website", "docs", "--index", "a/index.html"][..],
            "slash",
        ),
    ] {
        let run = server.cli(args).await;
        assert_ne!(run.code, 0, "{args:?} succeeded: {}", run.stdout);
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    // Neither --index nor --off: clap refuses.
    let run = server.cli(&["bucket", "website", "docs"]).await;
    assert_ne!(run.code, 0);

    let page = tmp.path().join("index.html");
    std::fs::write(&page, "hello").unwrap();
    for key in [
        "s3://docs/index.html",
        "s3://docs/guide/index.html",
        "s3://docs/x.txt",
    ] {
        ok(
            aws(&server, &["s3", "cp", page.to_str().unwrap(), key]),
            "cp",
        );
    }
    let run = server
        .cli(&[
            "bucket",
            "website",
            "docs",
            "--index",
            "index.html",
            "--error",
            "x.txt",
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("bucket docs is a website"),
        "{}",
        run.stdout
    );
    let res = site(&server, reqwest::Method::GET, "docs.localhost", "/guide/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "hello");

    let run = server.cli(&["bucket", "ls"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("docs") && run.stdout.contains("index index.html, error x.txt"),
        "{}",
        run.stdout
    );
    let run = server
        .cli(&["-o", "json", "bucket", "ls", "docs", "--prefix", "guide/"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed["objects"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["objects"][0]["key"], "guide/index.html");
    assert_eq!(listed["objects"][0]["size_bytes"], 5);
    let run = server.cli(&["bucket", "ls", "docs"]).await;
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);

    let run = server.cli(&["bucket", "website", "docs", "--off"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let res = site(&server, reqwest::Method::GET, "docs.localhost", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Not empty: refused, and nothing is lost; --force empties it first.
    let run = server.cli(&["bucket", "rm", "docs"]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("bucket_not_empty"), "{}", run.stderr);
    let run = server.cli(&["bucket", "ls", "docs"]).await;
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    let run = server
        .cli(&["-o", "json", "bucket", "rm", "docs", "--force"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let done: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(done, serde_json::json!({"bucket": "docs", "deleted": true}));
    let listed = ok(aws(&server, &["s3", "ls"]), "ls");
    assert!(!listed.contains("docs"), "{listed}");
}
