//! The state backend options: `state.backend.type: rocksdb` needs the
//! `rocksdb` cargo feature, and a build without it says how to enable it;
//! bad values name the key, the value and what is accepted; `conf/weir.yaml`
//! documents the new options with their defaults.

use weir::runtime::config::{options, Conf, ConfigError, ValueSource};
use weir::runtime::state::{BackendKind, StateBackendConfig};

#[test]
fn rocksdb_without_the_feature_is_a_clear_error() {
    let r = Conf::defaults()
        .set("state.backend.type", "rocksdb")
        .map(|_| ());
    if cfg!(feature = "rocksdb") {
        r.unwrap();
    } else {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("--features rocksdb"), "{msg}");
        assert!(msg.contains("state.backend.type"), "{msg}");
    }
    // The message a build without the feature gives (checked on every build).
    let msg = ConfigError::FeatureMissing {
        key: "state.backend.type".into(),
        value: "rocksdb".into(),
        origin: ValueSource::Dynamic,
        feature: "rocksdb",
    }
    .to_string();
    assert!(
        msg.contains("state.backend.type")
            && msg.contains("'rocksdb'")
            && msg.contains("rebuild with `--features rocksdb`"),
        "{msg}"
    );
}

#[test]
fn bad_values_name_key_value_and_accepted_values() {
    for (key, value, accepted) in [
        ("state.backend.type", "leveldb", "hashmap, rocksdb"),
        (
            "execution.checkpointing.incremental",
            "yes",
            "true or false",
        ),
        (
            "state.backend.rocksdb.value-cache.entries",
            "-1",
            "an integer",
        ),
    ] {
        let msg = Conf::defaults().set(key, value).unwrap_err().to_string();
        assert!(
            msg.contains(key) && msg.contains(value) && msg.contains(accepted),
            "{msg}"
        );
    }
}

#[test]
fn defaults_and_documentation() {
    let c = Conf::defaults();
    let s = StateBackendConfig::from_conf(&c);
    assert_eq!(s.kind, BackendKind::Heap);
    assert!(!s.incremental);
    assert_eq!(s.local_dir, None);
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/weir.yaml")).unwrap();
    for o in [
        &options::STATE_BACKEND.def,
        &options::CHECKPOINTING_INCREMENTAL.def,
        &options::ROCKSDB_LOCALDIR.def,
        &options::ROCKSDB_CACHE_ENTRIES.def,
    ] {
        let line = yaml
            .lines()
            .find(|l| l.starts_with(&format!("{}:", o.key)))
            .unwrap_or_else(|| panic!("{} not in conf/weir.yaml", o.key));
        assert!(
            line.contains(o.default.trim_matches('"')) || o.default.is_empty(),
            "{line}"
        );
    }
}
