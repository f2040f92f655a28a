//! Kafka client properties: what is handed to librdkafka, read from weir's
//! configuration (`kafka.properties.*`) or set in code, and never shown
//! with its secrets.

use std::fmt;

use rdkafka::ClientConfig;
use weir_runtime::config::{options, shown, Conf};

/// librdkafka properties (`bootstrap.servers`, `group.id`,
/// `security.protocol`, `sasl.username`, `sasl.password`, ...).
///
/// `Debug` shows secrets (`sasl.password`, any key naming a password,
/// secret, token or JAAS configuration) as `******`, so a builder or an
/// error that prints its properties never leaks them into logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    props: Vec<(String, String)>,
}

impl KafkaProperties {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `kafka.properties.*` of a configuration: `bootstrap.servers`,
    /// `group.id` (when set) and every other property under the prefix.
    pub fn from_conf(conf: &Conf) -> Self {
        let mut p = KafkaProperties::new();
        for (key, option) in [
            ("bootstrap.servers", &options::KAFKA_BOOTSTRAP_SERVERS),
            ("group.id", &options::KAFKA_GROUP_ID),
        ] {
            let v = conf.get(option);
            if !v.is_empty() {
                p.set(key, v);
            }
        }
        for (k, v, _) in conf.kafka_properties() {
            p.set(k, v);
        }
        p
    }

    /// Sets a property (replacing an earlier value).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.props.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => self.props.push((key, value)),
        }
        self
    }

    /// Sets a property unless it is already set.
    pub fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }

    /// A property's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The brokers, for messages (never a secret).
    pub fn brokers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or("")
    }

    /// The librdkafka configuration, with `extra` set on top.
    pub(crate) fn client_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.props {
            c.set(k, v);
        }
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.props.iter().map(|(k, v)| (k, shown(k, v))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_shown() {
        let mut conf = Conf::defaults();
        conf.set("kafka.properties.bootstrap.servers", "127.0.0.1:9092")
            .unwrap()
            .set("kafka.properties.sasl.password", "hunter2")
            .unwrap()
            .set("kafka.properties.sasl.username", "alice")
            .unwrap();
        let p = KafkaProperties::from_conf(&conf);
        assert_eq!(p.get("sasl.password"), Some("hunter2"));
        assert_eq!(p.brokers(), "127.0.0.1:9092");
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("******") && shown.contains("alice"),
            "{shown}"
        );
    }
}
