//! Wick's Kafka plumbing over rskafka: connecting with a deadline, creating topics, deciding which
//! partitions an instance owns, and lag from the high watermark.
//!
//! rskafka has no consumer groups and no offset tracking: Wick assigns partitions itself (each
//! instance owns the partitions `p` with `p mod count == index`) and stores its own offsets.

pub mod partitioner;

use std::time::Duration;

use rskafka::client::error::ProtocolError;
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

pub use rskafka;

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach the Kafka broker at {brokers}: {source}")]
    Connect { brokers: String, source: rskafka::client::error::Error },
    #[error("listing topics on {brokers}: {source}")]
    ListTopics { brokers: String, source: rskafka::client::error::Error },
    #[error("creating topic {topic} with {partitions} partitions: {source}")]
    CreateTopic { topic: String, partitions: i32, source: rskafka::client::error::Error },
    #[error("topic {topic} exists with {actual} partitions, but {expected} are configured")]
    PartitionMismatch { topic: String, expected: i32, actual: usize },
    #[error("instance index {index} is not below the instance count {count}")]
    BadAssignment { index: u32, count: u32 },
}

/// Connects to the bootstrap brokers. Requests retry with backoff for at most `deadline`, so an
/// unreachable broker is an error rather than a hang.
pub async fn connect(brokers: &[String], deadline: Duration) -> Result<Client, KafkaError> {
    let backoff =
        BackoffConfig { init_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2), base: 2.0, deadline: Some(deadline) };
    ClientBuilder::new(brokers.to_vec())
        .backoff_config(backoff)
        .build()
        .await
        .map_err(|source| KafkaError::Connect { brokers: brokers.join(","), source })
}

/// A topic and its partition count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

/// What [`ensure_topics`] did with one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicState {
    Created,
    Existed,
}

/// Creates the topics that are missing (replication factor 1 on a single broker; a real cluster's
/// topics are best created by its operators). An existing topic with another partition count is an
/// error: partition ownership depends on it.
pub async fn ensure_topics(client: &Client, brokers: &str, topics: &[TopicSpec]) -> Result<Vec<(String, TopicState)>, KafkaError> {
    let existing = client.list_topics().await.map_err(|source| KafkaError::ListTopics { brokers: brokers.to_owned(), source })?;
    let controller = client.controller_client().map_err(|source| KafkaError::ListTopics { brokers: brokers.to_owned(), source })?;
    let mut out = Vec::with_capacity(topics.len());
    for spec in topics {
        match existing.iter().find(|t| t.name == spec.name) {
            Some(t) if t.partitions.len() as i32 == spec.partitions => out.push((spec.name.clone(), TopicState::Existed)),
            Some(t) => {
                return Err(KafkaError::PartitionMismatch {
                    topic: spec.name.clone(),
                    expected: spec.partitions,
                    actual: t.partitions.len(),
                })
            }
            None => match controller.create_topic(spec.name.clone(), spec.partitions, 1, 10_000).await {
                Ok(()) => out.push((spec.name.clone(), TopicState::Created)),
                // Another instance starting at the same moment created it first: check it as an
                // existing topic.
                Err(rskafka::client::error::Error::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. }) => {
                    let now =
                        client.list_topics().await.map_err(|source| KafkaError::ListTopics { brokers: brokers.to_owned(), source })?;
                    match now.iter().find(|t| t.name == spec.name) {
                        Some(t) if t.partitions.len() as i32 != spec.partitions => {
                            return Err(KafkaError::PartitionMismatch {
                                topic: spec.name.clone(),
                                expected: spec.partitions,
                                actual: t.partitions.len(),
                            })
                        }
                        _ => out.push((spec.name.clone(), TopicState::Existed)),
                    }
                }
                Err(source) => return Err(KafkaError::CreateTopic { topic: spec.name.clone(), partitions: spec.partitions, source }),
            },
        }
    }
    Ok(out)
}

/// The partitions instance `index` of `count` owns: `p mod count == index`.
pub fn owned_partitions(partitions: i32, index: u32, count: u32) -> Result<Vec<i32>, KafkaError> {
    if count == 0 || index >= count {
        return Err(KafkaError::BadAssignment { index, count });
    }
    Ok((0..partitions).filter(|p| (*p as u32) % count == index).collect())
}

/// A dead letter for a record read from `topic`/`partition` at `offset`: its raw bytes, and the
/// reason and source in headers (`reason`, `source-topic`, `source-partition`, `source-offset`).
pub fn dead_letter_record(raw: Vec<u8>, reason: &str, topic: &str, partition: i32, offset: i64) -> rskafka::record::Record {
    let headers = [
        ("reason", reason.to_owned()),
        ("source-topic", topic.to_owned()),
        ("source-partition", partition.to_string()),
        ("source-offset", offset.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect();
    rskafka::record::Record { key: None, value: Some(raw), headers, timestamp: chrono::Utc::now() }
}

/// Records behind: the high watermark (the offset the next record will get, returned by every
/// fetch) minus the next offset to consume.
pub fn lag(high_watermark: i64, next_offset: i64) -> i64 {
    (high_watermark - next_offset).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_own_disjoint_partitions_that_cover_the_topic() {
        for count in 1..=5u32 {
            let mut all: Vec<i32> = (0..count).flat_map(|i| owned_partitions(16, i, count).unwrap()).collect();
            all.sort();
            assert_eq!(all, (0..16).collect::<Vec<_>>());
        }
        assert_eq!(owned_partitions(16, 1, 4).unwrap(), vec![1, 5, 9, 13]);
        assert!(matches!(owned_partitions(16, 2, 2), Err(KafkaError::BadAssignment { .. })));
        assert!(owned_partitions(16, 0, 0).is_err());
    }

    #[test]
    fn lag_never_goes_negative() {
        assert_eq!(lag(100, 40), 60);
        assert_eq!(lag(100, 100), 0);
        assert_eq!(lag(5, 9), 0);
    }
}
