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
