use crate::{broker_error, KafkaConfig, REQUEST_TIMEOUT};
use agora_bus::LogError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::{Duration, Instant};

/// What [`ensure_topic`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicState {
    Created,
    /// The topic was there already, with this many partitions (not changed: adding
    /// partitions moves keys, see the operations runbook).
    Existed {
        partitions: u32,
    },
}

/// Creates `topic` with `partitions` partitions and `replication` replicas each, unless it
/// exists. Returns once the topic's metadata shows its partitions, so a producer or consumer
/// created next finds them.
pub fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: u32,
    replication: u32,
) -> Result<TopicState, LogError> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config(&[])
        .create()
        .map_err(|e| broker_error("creating the Kafka admin client", e))?;
    // A topic that exists already is left alone, without asking to create it: a deployment
    // may give agora no right to create topics, and some brokers (librdkafka's mock) do not
    // answer CreateTopics at all.
    if let Some(partitions) = existing_partitions(&admin, topic)? {
        return Ok(TopicState::Existed { partitions });
    }
    let new_topic = NewTopic::new(
        topic,
        partitions as i32,
        TopicReplication::Fixed(replication as i32),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))
        .map_err(|e| broker_error(&format!("creating topic {topic}"), e))?;
    let created = match results.into_iter().next() {
        Some(Ok(_)) => true,
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => false,
        Some(Err((_, code))) => return Err(broker_error(&format!("creating topic {topic}"), code)),
        None => {
            return Err(LogError::Broker(format!(
                "creating topic {topic}: no answer"
            )))
        }
    };
    let found = visible_partitions(&admin, topic)?;
    Ok(if created {
        TopicState::Created
    } else {
        TopicState::Existed { partitions: found }
    })
}

/// The topic's partition count if the metadata lists it with every partition led.
fn existing_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Option<u32>, LogError> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| broker_error(&format!("reading the metadata of topic {topic}"), e))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions())
        .filter(|ps| !ps.is_empty() && ps.iter().all(|p| p.error().is_none() && p.leader() >= 0))
        .map(|ps| ps.len() as u32))
}

/// The topic's partition count once the metadata shows every partition with a leader.
fn visible_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<u32, LogError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        if let Some(partitions) = existing_partitions(admin, topic)? {
            return Ok(partitions);
        }
        if Instant::now() >= deadline {
            return Err(LogError::Broker(format!(
                "topic {topic} has no leader for every partition after {REQUEST_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
