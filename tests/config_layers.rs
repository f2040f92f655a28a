//! Configuration: file, environment and `-D` layers, their precedence, and
//! rejection of unknown keys and bad values; `conf/weir.yaml` documents every option.

use std::path::Path;
use std::time::Duration;

use weir::runtime::config::{options, Conf, ConfigError, ValueSource};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_without_any_layer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weir.yaml"), "").unwrap();
    let c = Conf::load_from(Some(dir.path()), &[], &[]).unwrap();
    assert_eq!(c.get(&options::PARALLELISM_DEFAULT), 1);
    assert_eq!(c.get(&options::MAX_PARALLELISM), 128);
    assert_eq!(c.get(&options::STATE_BACKEND), "hashmap");
}

#[test]
fn file_then_env_then_dynamic() {
    let dir = tempfile::tempdir().unwrap();
    // Nested maps and flat dotted keys both work.
    std::fs::write(
        dir.path().join("weir.yaml"),
        "parallelism:\n  default: 3\npipeline.max-parallelism: 64\npipeline.batch-size: 100\nclient.progress-interval: 2 s\n",
    )
    .unwrap();
    let c = Conf::load_from(Some(dir.path()), &[], &[]).unwrap();
    assert_eq!(c.get(&options::PARALLELISM_DEFAULT), 3);
    assert_eq!(c.get(&options::MAX_PARALLELISM), 64);
    assert_eq!(c.get(&options::PROGRESS_INTERVAL), Duration::from_secs(2));

    let e = env(&[
        ("WEIR_PARALLELISM_DEFAULT", "5"),
        ("WEIR_PIPELINE_BATCH_SIZE", "200"),
        ("HOME", "/x"),
    ]);
    let c = Conf::load_from(Some(dir.path()), &e, &[]).unwrap();
    assert_eq!(c.get(&options::PARALLELISM_DEFAULT), 5, "env beats file");
    assert_eq!(c.get(&options::BATCH_SIZE), 200);
    assert_eq!(c.get(&options::MAX_PARALLELISM), 64, "file value kept");

    let c = Conf::load_from(Some(dir.path()), &e, &["parallelism.default=7".into()]).unwrap();
    assert_eq!(c.get(&options::PARALLELISM_DEFAULT), 7, "-D beats env");
    let sources: Vec<(&str, ValueSource)> = c.entries().map(|(k, _, s)| (k, s.clone())).collect();
    assert!(sources.contains(&("parallelism.default", ValueSource::Dynamic)));
    assert!(sources.contains(&(
        "pipeline.batch-size",
        ValueSource::Env("WEIR_PIPELINE_BATCH_SIZE".into())
    )));
}

#[test]
fn unknown_keys_are_rejected_in_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weir.yaml"), "paralelism.default: 2\n").unwrap();
    let err = Conf::load_from(Some(dir.path()), &[], &[]).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("did you mean 'parallelism.default'"),
        "{err}"
    );
    assert!(
        err.to_string().contains("weir.yaml"),
        "names the file: {err}"
    );

    let err = Conf::load_from(None, &env(&[("WEIR_NOT_AN_OPTION", "1")]), &[]).unwrap_err();
    assert!(err.to_string().contains("WEIR_NOT_AN_OPTION"), "{err}");

    let err = Conf::load_from(None, &[], &["no.such.key=1".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown configuration key 'no.such.key' (from -D)"
    );

    let err = Conf::load_from(None, &[], &["parallelism.default".into()]).unwrap_err();
    assert!(matches!(err, ConfigError::Malformed(_)), "{err}");
}

#[test]
fn bad_values_name_key_value_and_accepted_values() {
    let cases = [
        ("parallelism.default=0", "an integer from 1 to 32768"),
        ("parallelism.default=two", "an integer from 1 to 32768"),
        ("client.progress-interval=soon", "a duration"),
        ("state.backend.type=memory", "one of hashmap"),
    ];
    for (prop, accepted) in cases {
        let err = Conf::load_from(None, &[], &[prop.into()])
            .unwrap_err()
            .to_string();
        let (k, v) = prop.split_once('=').unwrap();
        assert!(
            err.contains(&format!("'{v}'"))
                && err.contains(&format!("'{k}'"))
                && err.contains(accepted),
            "{err}"
        );
    }
    // Enum values are case-insensitive and normalised.
    let c = Conf::load_from(None, &[], &["state.backend.type=HashMap".into()]).unwrap();
    assert_eq!(c.get(&options::STATE_BACKEND), "hashmap");
}

#[test]
fn missing_conf_dir_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Conf::load_from(Some(dir.path()), &[], &[]).unwrap_err();
    assert!(
        err.to_string().contains("cannot load configuration file"),
        "{err}"
    );
}

#[test]
fn conf_weir_yaml_lists_every_option_with_its_default_and_a_comment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/weir.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(':').unwrap();
        assert!(
            lines[i - 1].starts_with("# "),
            "{k} has no comment line above it"
        );
        let def = options::ALL
            .iter()
            .find(|d| d.key == k)
            .unwrap_or_else(|| panic!("{k} is not an option"));
        assert_eq!(v.trim().trim_matches('"'), def.default, "default of {k}");
        assert_eq!(
            lines[i - 1].trim_start_matches("# "),
            def.doc,
            "comment of {k}"
        );
        keys.push(k);
    }
    let all: Vec<&str> = options::ALL.iter().map(|d| d.key).collect();
    assert_eq!(keys, all, "conf/weir.yaml lists every option, in order");
    // And it loads as it is.
    Conf::load_from(Some(path.parent().unwrap()), &[], &[]).unwrap();
}

/// `kafka.properties.<name>` that is not a declared option goes to the
/// Kafka client as it is, from every layer (the environment's `_` become
/// `.`: librdkafka's names have no `_` or `-`); secrets are never shown.
#[test]
fn kafka_client_properties_pass_through_every_layer_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("weir.yaml"),
        "kafka:\n  properties:\n    security.protocol: SASL_PLAINTEXT\n    bootstrap.servers: b1:9092\n",
    )
    .unwrap();
    let c = Conf::load_from(
        Some(dir.path()),
        &env(&[("WEIR_KAFKA_PROPERTIES_SASL_MECHANISM", "PLAIN")]),
        &["kafka.properties.sasl.password=hunter2".to_string()],
    )
    .unwrap();
    assert_eq!(c.get(&options::KAFKA_BOOTSTRAP_SERVERS), "b1:9092");
    let props: Vec<(String, String)> = c
        .kafka_properties()
        .map(|(k, v, _)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        props,
        [
            ("sasl.mechanism".to_string(), "PLAIN".to_string()),
            ("sasl.password".to_string(), "hunter2".to_string()),
            (
                "security.protocol".to_string(),
                "SASL_PLAINTEXT".to_string()
            ),
        ]
    );
    // a declared Kafka option is still checked
    let bad = Conf::load_from(
        Some(dir.path()),
        &[],
        &["kafka.sink.delivery-guarantee=twice".to_string()],
    );
    assert!(matches!(bad, Err(ConfigError::BadValue { .. })), "{bad:?}");

    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "config",
            "show",
            "-D",
            "kafka.properties.sasl.password=hunter2",
        ])
        .args(["-D", "s3.secret-key=abc123"])
        .env("WEIR_CONF_DIR", dir.path())
        .output()
        .unwrap();
    assert!(shown.status.success());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        !text.contains("hunter2") && !text.contains("abc123"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("kafka.properties.sasl.password"))
        .expect("the property is listed");
    assert!(line.contains("******"), "{line}");
    assert!(text.contains("SASL_PLAINTEXT"), "{text}");
}
