//! The test helpers against the real stack: they must reach each service, isolate tests from each
//! other, and fail loudly (naming the service) when one is missing.

use std::time::Duration;

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

#[test]
fn names_are_unique() {
    let names: std::collections::HashSet<String> = (0..1000).map(|_| wick_test_support::unique_name("t")).collect();
    assert_eq!(names.len(), 1000);
    let ident = wick_test_support::unique_ident("Wick-Test");
    assert!(ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{ident}");
}

#[tokio::test]
async fn each_test_gets_its_own_schema() {
    let (client, schema) = wick_test_support::postgres_schema().await;
    let (_, other) = wick_test_support::postgres_schema().await;
    assert_ne!(schema, other);
    let rows = client
        .query("SELECT schema_name FROM information_schema.schemata WHERE schema_name = ANY($1)", &[&vec![schema.clone(), other.clone()]])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    client.batch_execute(&format!("DROP SCHEMA {schema}; DROP SCHEMA {other}")).await.unwrap();
}

#[test]
fn redis_answers_and_prefixes_differ() {
    assert_ne!(wick_test_support::redis_prefix(), wick_test_support::redis_prefix());
    let err = wick_test_support::redis_ping(&closed_port()).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn topics_are_created_with_their_partitions() {
    let client = wick_test_support::kafka().await;
    let topic = wick_test_support::topic(&client, "support", 3).await;
    let topics = client.list_topics().await.unwrap();
    let found = topics.iter().find(|t| t.name == topic).expect("the topic exists");
    assert_eq!(found.partitions.len(), 3);
    let p = wick_test_support::partition(&client, &topic, 2).await;
    let offsets = wick_test_support::produce(&p, [b"a".to_vec(), b"b".to_vec()]).await;
    let (records, high_watermark) = wick_test_support::read_to_end(&p, offsets[0], Duration::from_secs(10)).await.unwrap();
    assert_eq!((records.len(), high_watermark), (2, offsets[1] + 1));
}

#[tokio::test]
#[should_panic(expected = "is unreachable")]
async fn a_missing_broker_fails_the_test_and_names_it() {
    wick_test_support::kafka_at(&closed_port()).await;
}

#[tokio::test]
async fn wait_until_reports_what_it_waited_for() {
    let err = wick_test_support::wait_until("the moon turns blue", Duration::from_millis(120), || async { false }).await.unwrap_err();
    assert!(err.to_string().contains("the moon turns blue"), "{err}");
    let mut n = 0;
    wick_test_support::wait_until("three polls", Duration::from_secs(5), || {
        n += 1;
        let done = n >= 3;
        async move { done }
    })
    .await
    .unwrap();
    assert_eq!(n, 3);
}

/// A page whose script paints a 50 x 50 square on a 200 x 100 canvas, a tick after loading, and
/// then counts the painted pixels.
const CANVAS_PAGE: &str = r#"<!doctype html>
<html><body style="margin:0;background:#fff">
<canvas id="c" width="200" height="100"></canvas>
<script>
setTimeout(() => {
  const ctx = document.getElementById('c').getContext('2d');
  ctx.fillStyle = '#e0403a';
  ctx.fillRect(20, 20, 50, 50);
  const pixels = ctx.getImageData(0, 0, 200, 100).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted += 1;
  window.painted = painted;
}, 100);
</script>
</body></html>"#;

/// Serves `CANVAS_PAGE` at `/` (and 404 elsewhere) over hand-written HTTP/1.1, one request per
/// connection.
async fn serve_canvas_page() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if request.starts_with(b"GET / ") { ("200 OK", CANVAS_PAGE) } else { ("404 Not Found", "not found") };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn the_browser_runs_a_page_and_takes_screenshots() {
    use wick_test_support::browser::{Browser, VIEWPORT};
    let address = serve_canvas_page().await;
    let browser = Browser::launch().unwrap();
    let page = browser.open(&format!("http://{address}/")).await.unwrap();

    let painted = page.wait_for("window.painted", Duration::from_secs(20)).await.unwrap();
    assert_eq!(painted, serde_json::json!(50 * 50));
    assert_eq!(page.eval("document.getElementById('c').width * 2").await.unwrap(), serde_json::json!(400));
    assert_eq!(page.eval("Promise.resolve({a: [1, 'x']})").await.unwrap(), serde_json::json!({"a": [1, "x"]}));

    let err = page.eval("throw new Error('the page says no')").await.unwrap_err();
    assert!(err.to_string().contains("the page says no"), "{err}");
    let err = page.wait_for("window.painted > 1e9", Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("window.painted > 1e9") && err.to_string().contains("false"), "{err}");

    let png = page.screenshot_png().await.unwrap();
    assert!(png.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]), "{:?}", &png[..png.len().min(16)]);
    // The IHDR chunk: width and height, big-endian, at bytes 16..24.
    let size = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    assert_eq!((size(16), size(20)), VIEWPORT);

    let err = browser.open(&format!("http://{}/", closed_port())).await.unwrap_err();
    assert!(err.to_string().contains("ERR_CONNECTION_REFUSED"), "{err:#}");
}
