//! Configuration: every option weir knows, with Flink's key names, loaded in
//! layers and validated before a job starts.
//!
//! # Layers (later wins)
//! 1. the defaults compiled into [`options`] (the same values `conf/weir.yaml` shows);
//! 2. the file `weir.yaml` in `$WEIR_CONF_DIR`, else `./conf/weir.yaml` when it exists
//!    (read with the [`config`] crate; nested YAML maps and flat dotted keys both work);
//! 3. environment variables: `WEIR_` + the key in upper case with `.` and `-` turned
//!    into `_`, e.g. `WEIR_PARALLELISM_DEFAULT=4` for `parallelism.default`;
//! 4. dynamic properties, `-D key=value` on every example's command line.
//!
//! Every layer is checked against [`options::ALL`]: an unknown key (including an
//! unknown `WEIR_*` variable) or a value that does not parse is rejected with a
//! [`ConfigError`] that names the key, the value, where it came from and what is
//! accepted. Nothing is silently ignored.
//!
//! Read typed values with [`Conf::get`] and the [`ConfigOption`] constants in
//! [`options`], Flink-style: `conf.get(&options::PARALLELISM_DEFAULT)`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the directory that holds `weir.yaml`.
pub const CONF_DIR_ENV: &str = "WEIR_CONF_DIR";
/// The prefix of environment variables that override options.
pub const ENV_PREFIX: &str = "WEIR_";

/// How an option's value is written and checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A whole number in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A duration: a number and a unit (`ms`, `s`, `min`, `h`, `d`); a bare number is milliseconds.
    Duration,
    /// A [`Kind::Duration`] of more than zero (a period).
    PositiveDuration,
    /// `true` or `false`.
    Bool,
    /// One of the listed words (case-insensitive).
    Enum(&'static [&'static str]),
    /// Any text (e.g. a path).
    Text,
    /// A duration, or `off` (also `none`, `disabled`, `0`).
    DurationOrOff,
    /// Empty (the feature is off), or an `http://` URL such as `http://localhost:4317`.
    Endpoint,
    /// A decimal number in `min..=max`.
    Float {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// An IP address to bind to (`127.0.0.1`, `0.0.0.0`, `::1`) or `localhost`.
    Address,
    /// A number of bytes in `min..=max`, Flink's way: `32kb`, `64 mb`, `1g`
    /// (binary multiples: 1kb = 1024 bytes); a bare number is bytes.
    MemorySize {
        /// Smallest accepted value, in bytes.
        min: u64,
        /// Largest accepted value, in bytes.
        max: u64,
    },
}

impl Kind {
    /// What a user may write, for error messages and docs.
    pub fn accepted(&self) -> String {
        match self {
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Duration => {
                "a duration such as 500ms, 1s, 10min or 1h (a bare number is milliseconds)".into()
            }
            Kind::PositiveDuration => {
                "a duration of more than 0 such as 500ms, 1s or 10s (a bare number is milliseconds)"
                    .into()
            }
            Kind::Bool => "true or false".into(),
            Kind::Enum(words) => {
                let words: Vec<&str> = words
                    .iter()
                    .map(|w| if w.is_empty() { "\"\" (not set)" } else { w })
                    .collect();
                format!("one of {}", words.join(", "))
            }
            Kind::Text => "any text".into(),
            Kind::DurationOrOff => "off, or a duration such as 500ms, 1s or 10min".into(),
            Kind::Float { min, max } => format!("a number from {min} to {max}"),
            Kind::Endpoint => "empty (off), or a URL such as http://localhost:4317 (http:// only: this build has no TLS)".into(),
            Kind::Address => {
                "an IP address such as 127.0.0.1 (loopback), 0.0.0.0 (every interface) or ::1, or localhost".into()
            }
            Kind::MemorySize { min, max } => format!(
                "a size from {min} to {max} bytes such as 32kb, 64kb or 1mb (kb = 1024 bytes; a bare number is bytes)"
            ),
        }
    }

    fn check(&self, raw: &str) -> Result<(), ()> {
        match self {
            Kind::Int { min, max } => match raw.trim().parse::<i64>() {
                Ok(v) if v >= *min && v <= *max => Ok(()),
                _ => Err(()),
            },
            Kind::Duration => parse_duration(raw).map(|_| ()).ok_or(()),
            Kind::PositiveDuration => match parse_duration(raw) {
                Some(d) if !d.is_zero() => Ok(()),
                _ => Err(()),
            },
            Kind::Bool => parse_bool(raw).map(|_| ()).ok_or(()),
            Kind::Enum(words) => {
                if words.iter().any(|w| w.eq_ignore_ascii_case(raw.trim())) {
                    Ok(())
                } else {
                    Err(())
                }
            }
            Kind::Text => Ok(()),
            Kind::DurationOrOff => parse_duration_or_off(raw).map(|_| ()).ok_or(()),
            Kind::Float { min, max } => match raw.trim().parse::<f64>() {
                Ok(v) if v >= *min && v <= *max => Ok(()),
                _ => Err(()),
            },
            Kind::Endpoint => parse_endpoint(raw).map(|_| ()).ok_or(()),
            Kind::Address => {
                let a = raw.trim();
                if a.eq_ignore_ascii_case("localhost") || a.parse::<std::net::IpAddr>().is_ok() {
                    Ok(())
                } else {
                    Err(())
                }
            }
            Kind::MemorySize { min, max } => match parse_memory_size(raw) {
                Some(b) if b >= *min && b <= *max => Ok(()),
                _ => Err(()),
            },
        }
    }
}

/// The untyped description of one option: its key, default, kind and doc line.
#[derive(Debug, Clone, Copy)]
pub struct OptionDef {
    /// The key, Flink's name where Flink has the option.
    pub key: &'static str,
    /// The default, written as it would be in `weir.yaml`.
    pub default: &'static str,
    /// How the value is written and checked.
    pub kind: Kind,
    /// One line of documentation.
    pub doc: &'static str,
}

/// A typed option, e.g. `ConfigOption<usize>`; read it with [`Conf::get`].
#[derive(Debug)]
pub struct ConfigOption<T> {
    /// The untyped description.
    pub def: OptionDef,
    _t: PhantomData<fn() -> T>,
}

impl<T> ConfigOption<T> {
    /// A new option.
    pub const fn new(
        key: &'static str,
        default: &'static str,
        kind: Kind,
        doc: &'static str,
    ) -> Self {
        ConfigOption {
            def: OptionDef {
                key,
                default,
                kind,
                doc,
            },
            _t: PhantomData,
        }
    }
}

/// Types an option value can be read as. The value was validated against its
/// [`Kind`] when the configuration was loaded, so parsing here cannot fail for
/// the kinds each type is used with.
pub trait FromConfValue: Sized {
    /// Parses a validated value.
    fn from_conf_value(raw: &str) -> Option<Self>;
}

impl FromConfValue for usize {
    fn from_conf_value(raw: &str) -> Option<Self> {
        raw.trim().parse().ok()
    }
}
impl FromConfValue for i64 {
    fn from_conf_value(raw: &str) -> Option<Self> {
        raw.trim().parse().ok()
    }
}
impl FromConfValue for u64 {
    fn from_conf_value(raw: &str) -> Option<Self> {
        raw.trim().parse().ok()
    }
}
impl FromConfValue for f64 {
    fn from_conf_value(raw: &str) -> Option<Self> {
        raw.trim().parse().ok()
    }
}
impl FromConfValue for bool {
    fn from_conf_value(raw: &str) -> Option<Self> {
        parse_bool(raw)
    }
}
impl FromConfValue for Duration {
    fn from_conf_value(raw: &str) -> Option<Self> {
        parse_duration(raw)
    }
}
impl FromConfValue for Option<Duration> {
    fn from_conf_value(raw: &str) -> Option<Self> {
        parse_duration_or_off(raw)
    }
}
/// A number of bytes (an option of [`Kind::MemorySize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl FromConfValue for MemorySize {
    fn from_conf_value(raw: &str) -> Option<Self> {
        parse_memory_size(raw).map(MemorySize)
    }
}
impl FromConfValue for String {
    fn from_conf_value(raw: &str) -> Option<Self> {
        Some(raw.to_string())
    }
}
impl FromConfValue for PathBuf {
    fn from_conf_value(raw: &str) -> Option<Self> {
        Some(PathBuf::from(raw))
    }
}

/// Where a value came from, for messages and `weir config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// The compiled-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A `-D key=value` dynamic property.
    Dynamic,
    /// Set in code with [`Conf::set`].
    Code,
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Default => write!(f, "default"),
            ValueSource::File(p) => write!(f, "{}", p.display()),
            ValueSource::Env(v) => write!(f, "environment variable {v}"),
            ValueSource::Dynamic => write!(f, "-D"),
            ValueSource::Code => write!(f, "code"),
        }
    }
}

/// A rejected configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The key is not an option weir knows.
    #[error("unknown configuration key '{key}' (from {origin}){}", suggestion.as_ref().map(|s| format!("; did you mean '{s}'?")).unwrap_or_default())]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was written.
        origin: ValueSource,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// The value does not fit the option.
    #[error("invalid value '{value}' for configuration key '{key}' (from {origin}): expected {accepted}")]
    BadValue {
        /// The option's key.
        key: String,
        /// The value as written.
        value: String,
        /// Where it was written.
        origin: ValueSource,
        /// What is accepted.
        accepted: String,
    },
    /// The value needs a cargo feature this build does not have.
    #[error("configuration key '{key}' is '{value}' (from {origin}), but this build of weir has no {feature} support: rebuild with `--features {feature}` (e.g. `cargo run --release --features {feature} --example wordcount`; RocksDB's build needs libclang, see tests/run.sh)")]
    FeatureMissing {
        /// The option's key.
        key: String,
        /// The value as written.
        value: String,
        /// Where it was written.
        origin: ValueSource,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// `WEIR_FAILPOINTS` is not a valid list of failure points.
    #[error("bad WEIR_FAILPOINTS: {0}")]
    Failpoints(String),
    /// A `-D` argument without `=`.
    #[error("malformed dynamic property '{0}': expected -D key=value")]
    Malformed(String),
    /// The configuration file could not be read or parsed.
    #[error("cannot load configuration file '{}': {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A validated configuration: every known option has a value.
#[derive(Debug, Clone)]
pub struct Conf {
    values: BTreeMap<&'static str, (String, ValueSource)>,
    /// Kafka client properties passed to librdkafka as they are
    /// (`kafka.properties.<name>` that is not a declared option).
    kafka_properties: BTreeMap<String, (String, ValueSource)>,
}

/// The prefix of the Kafka client properties handed to librdkafka unchanged
/// (Flink's `properties.*` of the Kafka connector): any key under it is
/// accepted, e.g. `kafka.properties.security.protocol`.
pub const KAFKA_PROPERTIES_PREFIX: &str = "kafka.properties.";

/// Whether the value of `key` is a secret that must never be shown or
/// logged (passwords, secret keys, JAAS configurations, tokens).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "credentials"]
        .iter()
        .any(|w| k.contains(w))
}

/// What is shown instead of a secret value.
pub const REDACTED: &str = "******";

impl Default for Conf {
    fn default() -> Self {
        Conf::defaults()
    }
}

impl Conf {
    /// Only the compiled-in defaults.
    pub fn defaults() -> Self {
        Conf {
            values: options::ALL
                .iter()
                .map(|d| (d.key, (d.default.to_string(), ValueSource::Default)))
                .collect(),
            kafka_properties: BTreeMap::new(),
        }
    }

    /// Loads the layers described in the module docs from the process
    /// environment, plus the given `-D key=value` properties.
    pub fn load(dynamic: &[String]) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let dir = std::env::var_os(CONF_DIR_ENV).map(PathBuf::from);
        Conf::load_from(dir.as_deref(), &env, dynamic)
    }

    /// Loads from an explicit conf dir, environment and dynamic properties
    /// (what [`Conf::load`] does, without touching the process environment).
    /// With `conf_dir` `None`, `./conf/weir.yaml` is read when it exists.
    pub fn load_from(
        conf_dir: Option<&Path>,
        env: &[(String, String)],
        dynamic: &[String],
    ) -> Result<Self, ConfigError> {
        let mut conf = Conf::defaults();
        let file = match conf_dir {
            Some(dir) => Some(dir.join("weir.yaml")),
            None => {
                let p = PathBuf::from("conf/weir.yaml");
                p.exists().then_some(p)
            }
        };
        if let Some(path) = file {
            for (key, value) in read_yaml(&path)? {
                conf.set_from(&key, &value, ValueSource::File(path.clone()))?;
            }
        }
        // OpenTelemetry's standard variables, below weir's own `WEIR_*` ones.
        for (name, value) in env {
            if let Some((_, key)) = options::OTEL_ENV.iter().find(|(v, _)| v == name) {
                conf.set_from(key, value, ValueSource::Env(name.clone()))?;
            }
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                if name == crate::failpoint::ENV {
                    crate::failpoint::parse_spec(value).map_err(ConfigError::Failpoints)?;
                    continue;
                }
                if name == CONF_DIR_ENV || rest.is_empty() {
                    continue;
                }
                let def = options::ALL.iter().find(|d| env_name(d.key) == *name);
                let kafka = env_name(KAFKA_PROPERTIES_PREFIX);
                match def {
                    Some(d) => conf.set_from(d.key, value, ValueSource::Env(name.clone()))?,
                    // librdkafka's property names use only dots
                    None if name.len() > kafka.len() && name.starts_with(&kafka) => {
                        let prop = name[kafka.len()..].to_ascii_lowercase().replace('_', ".");
                        conf.set_from(
                            &format!("{KAFKA_PROPERTIES_PREFIX}{prop}"),
                            value,
                            ValueSource::Env(name.clone()),
                        )?
                    }
                    None => {
                        return Err(ConfigError::UnknownKey {
                            key: name.clone(),
                            origin: ValueSource::Env(name.clone()),
                            suggestion: suggest(&rest.to_ascii_lowercase().replace('_', "."))
                                .map(env_name),
                        })
                    }
                }
            }
        }
        for prop in dynamic {
            let (k, v) = prop
                .split_once('=')
                .ok_or_else(|| ConfigError::Malformed(prop.clone()))?;
            conf.set_from(k.trim(), v.trim(), ValueSource::Dynamic)?;
        }
        Ok(conf)
    }

    /// Sets `key` to `value` from code, with the same checks as the other layers.
    pub fn set(&mut self, key: &str, value: impl fmt::Display) -> Result<&mut Self, ConfigError> {
        self.set_from(key, &value.to_string(), ValueSource::Code)?;
        Ok(self)
    }

    fn set_from(&mut self, key: &str, value: &str, source: ValueSource) -> Result<(), ConfigError> {
        if let Some(prop) = key.strip_prefix(KAFKA_PROPERTIES_PREFIX) {
            if !prop.is_empty() && !options::ALL.iter().any(|d| d.key == key) {
                self.kafka_properties
                    .insert(key.to_string(), (value.to_string(), source));
                return Ok(());
            }
        }
        let def =
            options::ALL
                .iter()
                .find(|d| d.key == key)
                .ok_or_else(|| ConfigError::UnknownKey {
                    key: key.to_string(),
                    origin: source.clone(),
                    suggestion: suggest(key).map(str::to_string),
                })?;
        def.kind.check(value).map_err(|()| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            origin: source.clone(),
            accepted: def.kind.accepted(),
        })?;
        if def.key == options::STATE_BACKEND.def.key
            && value.trim().eq_ignore_ascii_case("rocksdb")
            && !cfg!(feature = "rocksdb")
        {
            return Err(ConfigError::FeatureMissing {
                key: key.to_string(),
                value: value.to_string(),
                origin: source,
                feature: "rocksdb",
            });
        }
        let value = match def.kind {
            Kind::Enum(words) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(value.trim()))
                .map(|w| w.to_string())
                .unwrap_or_default(),
            _ => value.to_string(),
        };
        self.values.insert(def.key, (value, source));
        Ok(())
    }

    /// The typed value of an option.
    pub fn get<T: FromConfValue>(&self, option: &ConfigOption<T>) -> T {
        let raw = self.raw(option.def.key);
        T::from_conf_value(raw)
            .or_else(|| T::from_conf_value(option.def.default))
            .unwrap_or_else(|| {
                // Every option's default is checked by a unit test against its kind.
                unreachable!("default of {} does not parse", option.def.key)
            })
    }

    /// The value of `key` as written, after validation.
    pub fn raw(&self, key: &str) -> &str {
        self.values.get(key).map(|(v, _)| v.as_str()).unwrap_or("")
    }

    /// Where the value of `key` came from (`None` for an unknown key).
    pub fn source(&self, key: &str) -> Option<&ValueSource> {
        self.values.get(key).map(|(_, s)| s)
    }

    /// Every option with its value and where the value came from, in key
    /// order (the Kafka client properties are in
    /// [`kafka_properties`](Self::kafka_properties)). Secret values
    /// ([`is_secret`]) are as written: show them with [`shown`].
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str, &ValueSource)> {
        self.values.iter().map(|(k, (v, s))| (*k, v.as_str(), s))
    }

    /// The Kafka client properties set under `kafka.properties.` that are
    /// not declared options, as (librdkafka property name, value, origin).
    pub fn kafka_properties(&self) -> impl Iterator<Item = (&str, &str, &ValueSource)> {
        self.kafka_properties
            .iter()
            .map(|(k, (v, s))| (&k[KAFKA_PROPERTIES_PREFIX.len()..], v.as_str(), s))
    }
}

/// `value` as it may be shown or logged: [`REDACTED`] for a non-empty
/// secret ([`is_secret`]).
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) && !value.is_empty() {
        REDACTED
    } else {
        value
    }
}

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    let mut s = String::from(ENV_PREFIX);
    s.extend(key.chars().map(|c| {
        if c == '.' || c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    s
}

fn read_yaml(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(err("file not found".into()));
    }
    let cfg = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Yaml))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let table = cfg
        .try_deserialize::<config::Map<String, config::Value>>()
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (k, v) in table {
        flatten(&k, v, &mut out).map_err(err)?;
    }
    Ok(out)
}

fn flatten(prefix: &str, v: config::Value, out: &mut Vec<(String, String)>) -> Result<(), String> {
    match v.kind {
        config::ValueKind::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out)?;
            }
            Ok(())
        }
        config::ValueKind::Array(_) => Err(format!("key '{prefix}': lists are not accepted")),
        config::ValueKind::Nil => Err(format!("key '{prefix}' has no value")),
        _ => {
            let s = v.into_string().map_err(|e| e.to_string())?;
            out.push((prefix.to_string(), s));
            Ok(())
        }
    }
}

/// Parses `true`/`false` (case-insensitive).
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `"10 MB"` -> `(10, "mb")`: the leading digits and the rest, trimmed and
/// lowercased; `None` without digits.
fn number_and_unit(raw: &str) -> Option<(u64, String)> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// Parses a Flink-style duration: `500ms`, `1 s`, `10min`, `2h`, `1d`; a bare
/// number is milliseconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(raw)?;
    let ms = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

/// Parses a Flink-style memory size: `32kb`, `64 mb`, `1g`, `512b`; units are
/// binary (1kb = 1024 bytes), a bare number is bytes.
pub fn parse_memory_size(raw: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(raw)?;
    let shift = match unit.as_str() {
        "" | "b" | "bytes" => 0,
        "k" | "kb" | "kib" | "kibibytes" => 10,
        "m" | "mb" | "mib" | "mebibytes" => 20,
        "g" | "gb" | "gib" | "gibibytes" => 30,
        "t" | "tb" | "tib" | "tebibytes" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Parses an OTLP endpoint: `Some(None)` when empty (off), `Some(Some(url))`
/// for `http://host[:port][/path]`, `None` for anything else.
pub fn parse_endpoint(raw: &str) -> Option<Option<String>> {
    let s = raw.trim();
    if s.is_empty() {
        return Some(None);
    }
    let rest = s.strip_prefix("http://")?;
    let host = rest.split('/').next().unwrap_or("");
    let valid = !host.is_empty()
        && !s.chars().any(char::is_whitespace)
        && host
            .rsplit_once(':')
            .is_none_or(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    valid.then(|| Some(s.trim_end_matches('/').to_string()))
}

/// Parses `off`/`none`/`disabled`/`0` as `Some(None)`, a duration as `Some(Some(d))`.
pub fn parse_duration_or_off(raw: &str) -> Option<Option<Duration>> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "disabled" | "0" => Some(None),
        _ => parse_duration(raw).map(Some),
    }
}

/// The known key closest to `key`, if it is close enough to be a typo.
fn suggest(key: &str) -> Option<&'static str> {
    options::ALL
        .iter()
        .map(|d| (edit_distance(key, d.key), d.key))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Every option weir knows. `conf/weir.yaml` lists the same keys with the same
/// defaults (a test keeps the two in step).
pub mod options {
    use super::{ConfigOption, Kind, MemorySize, OptionDef};
    use std::path::PathBuf;
    use std::time::Duration;

    /// Parallelism of operators that do not set their own.
    pub const PARALLELISM_DEFAULT: ConfigOption<usize> = ConfigOption::new(
        "parallelism.default",
        "1",
        Kind::Int { min: 1, max: 32768 },
        "parallelism of operators that do not call set_parallelism",
    );
    /// Number of key groups: the upper bound of keyed parallelism and the unit of rescaling.
    pub const MAX_PARALLELISM: ConfigOption<usize> = ConfigOption::new(
        "pipeline.max-parallelism",
        "128",
        Kind::Int { min: 1, max: 32768 },
        "number of key groups: the highest parallelism keyed state can be rescaled to",
    );
    /// How often sources and assigners emit periodic watermarks (Flink's key).
    pub const AUTO_WATERMARK_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "pipeline.auto-watermark-interval",
        "200ms",
        Kind::Duration,
        "how often watermark strategies emit periodic watermarks and check idleness (processing time)",
    );
    /// Records per batch on key-partitioned channels, at most.
    pub const BATCH_SIZE: ConfigOption<usize> = ConfigOption::new(
        "pipeline.batch-size",
        "4096",
        Kind::Int {
            min: 1,
            max: 1_048_576,
        },
        "records per batch sent between subtasks, at most (taskmanager.memory.segment-size also bounds a batch)",
    );
    /// Bytes of records per batch on key-partitioned channels, at most.
    pub const SEGMENT_SIZE: ConfigOption<MemorySize> = ConfigOption::new(
        "taskmanager.memory.segment-size",
        "32kb",
        Kind::MemorySize {
            min: 1,
            max: 1 << 30,
        },
        "bytes of records per batch sent between subtasks, at most, each record counted by its inline size (size_of: a String's or Vec's heap bytes are not counted); at least one record",
    );
    /// Records a source emits per poll.
    pub const SOURCE_BATCH_SIZE: ConfigOption<usize> = ConfigOption::new(
        "pipeline.source-batch-size",
        "128",
        Kind::Int {
            min: 1,
            max: 1_048_576,
        },
        "records a source emits per poll (small keeps a flat_map's output in cache)",
    );
    /// Batches a channel holds before the sender waits (backpressure).
    pub const BUFFERS_PER_CHANNEL: ConfigOption<usize> = ConfigOption::new(
        "taskmanager.network.memory.buffers-per-channel",
        "4",
        Kind::Int { min: 1, max: 65536 },
        "batches one channel holds before its sender waits (backpressure)",
    );
    /// Threads of the job's shared tokio runtime (actors, coordinator,
    /// uploads); 0 means one per CPU core. Processing loops have their own threads.
    pub const WORKER_THREADS: ConfigOption<usize> = ConfigOption::new(
        "taskmanager.worker-threads",
        "0",
        Kind::Int { min: 0, max: 4096 },
        "threads of the job's shared runtime (actors, the checkpoint coordinator, uploads); each subtask's processing loop has a thread of its own (0: one per CPU core)",
    );
    /// Where keyed state lives.
    pub const STATE_BACKEND: ConfigOption<String> = ConfigOption::new(
        "state.backend.type",
        "hashmap",
        Kind::Enum(&["hashmap", "rocksdb"]),
        "keyed state backend: hashmap (in memory, copy-on-write snapshots) or rocksdb (on local disk; needs a build with --features rocksdb)",
    );
    /// Incremental checkpoints.
    pub const CHECKPOINTING_INCREMENTAL: ConfigOption<bool> = ConfigOption::new(
        "execution.checkpointing.incremental",
        "false",
        Kind::Bool,
        "rocksdb: upload only SST files no earlier checkpoint uploaded (to <job-dir>/shared/, reference-counted); false uploads a full copy each time",
    );
    /// RocksDB working directory.
    pub const ROCKSDB_LOCALDIR: ConfigOption<String> = ConfigOption::new(
        "state.backend.rocksdb.localdir",
        "",
        Kind::Text,
        "rocksdb: where each stateful subtask keeps its database (deleted when the subtask ends); empty: the system's temporary directory",
    );
    /// RocksDB write cache of value states.
    pub const ROCKSDB_CACHE_ENTRIES: ConfigOption<usize> = ConfigOption::new(
        "state.backend.rocksdb.value-cache.entries",
        "65536",
        Kind::Int {
            min: 0,
            max: 100_000_000,
        },
        "rocksdb: value-state entries per state and subtask kept deserialized in memory and written back in batches (at snapshots and when full); 0: every access goes to RocksDB",
    );
    /// Whether the RocksDB instances of a slot share one memory budget.
    pub const ROCKSDB_MEMORY_MANAGED: ConfigOption<bool> = ConfigOption::new(
        "state.backend.rocksdb.memory.managed",
        "true",
        Kind::Bool,
        "rocksdb: the instances of one slot (subtask i of every stateful operator) share one block cache of the slot's budget, with their memtables charged to it; false: a 64 MiB block cache and 32 MiB write buffers per instance and column family, unbounded in total",
    );
    /// Managed memory of the process, divided among its slots.
    pub const MANAGED_MEMORY_SIZE: ConfigOption<MemorySize> = ConfigOption::new(
        "taskmanager.memory.managed.size",
        "512mb",
        Kind::MemorySize {
            min: 1 << 20,
            max: 1 << 50,
        },
        "memory for RocksDB state of the whole process (block caches and memtables), divided evenly among the slots: a slot per subtask index of the operator's parallelism",
    );
    /// A fixed RocksDB budget per slot.
    pub const ROCKSDB_MEMORY_FIXED_PER_SLOT: ConfigOption<MemorySize> = ConfigOption::new(
        "state.backend.rocksdb.memory.fixed-per-slot",
        "0",
        Kind::MemorySize {
            min: 0,
            max: 1 << 50,
        },
        "rocksdb: the memory budget of each slot, instead of a share of taskmanager.memory.managed.size (0: a share); budgets below 8mb are raised to 8mb",
    );
    /// Share of a slot's budget for memtables.
    pub const ROCKSDB_WRITE_BUFFER_RATIO: ConfigOption<f64> = ConfigOption::new(
        "state.backend.rocksdb.memory.write-buffer-ratio",
        "0.5",
        Kind::Float { min: 0.05, max: 0.9 },
        "rocksdb: the share of a slot's budget that memtables may take before RocksDB flushes them (they are also flushed by every checkpoint)",
    );
    /// Partitioned index and filter blocks.
    pub const ROCKSDB_PARTITIONED_INDEX_FILTERS: ConfigOption<bool> = ConfigOption::new(
        "state.backend.rocksdb.memory.partitioned-index-filters",
        "false",
        Kind::Bool,
        "rocksdb: false: one index and one bloom filter block per file, pinned in the slot's block cache (charged to the budget, never evicted; about 1.3 bytes per key); true: 4 KiB partitions read through the cache with only their top level pinned, slower lookups, for states whose filters would not fit in the budget",
    );
    /// Checkpoint interval.
    pub const CHECKPOINTING_INTERVAL: ConfigOption<Option<Duration>> = ConfigOption::new(
        "execution.checkpointing.interval",
        "1s",
        Kind::DurationOrOff,
        "time between checkpoint triggers; off disables checkpointing",
    );
    /// Checkpointing guarantee.
    pub const CHECKPOINTING_MODE: ConfigOption<String> = ConfigOption::new(
        "execution.checkpointing.mode",
        "EXACTLY_ONCE",
        Kind::Enum(&["EXACTLY_ONCE", "AT_LEAST_ONCE"]),
        "EXACTLY_ONCE aligns barriers; AT_LEAST_ONCE never blocks inputs",
    );
    /// Checkpoint timeout.
    pub const CHECKPOINTING_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "execution.checkpointing.timeout",
        "10min",
        Kind::Duration,
        "a checkpoint not complete after this long is aborted",
    );
    /// Minimum pause between checkpoints.
    pub const CHECKPOINTING_MIN_PAUSE: ConfigOption<Duration> = ConfigOption::new(
        "execution.checkpointing.min-pause",
        "0ms",
        Kind::Duration,
        "least time from the end of one checkpoint to the next trigger",
    );
    /// Maximum concurrent checkpoints.
    pub const CHECKPOINTING_MAX_CONCURRENT: ConfigOption<usize> = ConfigOption::new(
        "execution.checkpointing.max-concurrent-checkpoints",
        "1",
        Kind::Int { min: 1, max: 1000 },
        "checkpoints that may be in flight at once",
    );
    /// Tolerable failed checkpoints.
    pub const CHECKPOINTING_TOLERABLE_FAILURES: ConfigOption<usize> = ConfigOption::new(
        "execution.checkpointing.tolerable-failed-checkpoints",
        "0",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
        "consecutive failed checkpoints tolerated before the job fails",
    );
    /// Unaligned checkpoints.
    pub const CHECKPOINTING_UNALIGNED: ConfigOption<bool> = ConfigOption::new(
        "execution.checkpointing.unaligned.enabled",
        "false",
        Kind::Bool,
        "barriers overtake in-flight data, which is stored with the checkpoint",
    );
    /// Aligned checkpoint timeout.
    pub const CHECKPOINTING_ALIGNED_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "execution.checkpointing.aligned-checkpoint-timeout",
        "0ms",
        Kind::Duration,
        "with unaligned enabled: start aligned, switch to unaligned after this long (0: unaligned at once)",
    );
    /// Checkpoint directory.
    pub const CHECKPOINTING_DIR: ConfigOption<PathBuf> = ConfigOption::new(
        "execution.checkpointing.dir",
        "checkpoints",
        Kind::Text,
        "where checkpoints go, <dir>/<job-id>/chk-<n>/: a bare path, file:///abs/path or s3://bucket/prefix",
    );
    /// Retained checkpoints.
    pub const CHECKPOINTING_NUM_RETAINED: ConfigOption<usize> = ConfigOption::new(
        "execution.checkpointing.num-retained",
        "1",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
        "completed checkpoints kept; older ones are deleted",
    );
    /// What cancel does to checkpoints.
    pub const CHECKPOINTING_RETENTION: ConfigOption<String> = ConfigOption::new(
        "execution.checkpointing.externalized-checkpoint-retention",
        "RETAIN_ON_CANCELLATION",
        Kind::Enum(&["RETAIN_ON_CANCELLATION", "DELETE_ON_CANCELLATION"]),
        "whether a cancelled job's checkpoints are kept (a finished or failed job keeps them)",
    );
    /// Default savepoint directory.
    pub const SAVEPOINT_DIR: ConfigOption<String> = ConfigOption::new(
        "execution.checkpointing.savepoint-dir",
        "",
        Kind::Text,
        "default target directory of savepoints: <dir>/savepoint-<job-id prefix>-<random>/; empty: a savepoint needs an explicit target directory",
    );
    /// Restore path.
    pub const RECOVERY_PATH: ConfigOption<String> = ConfigOption::new(
        "execution.state-recovery.path",
        "",
        Kind::Text,
        "restore from this chk-<n> or savepoint directory (or its _metadata file), or the latest complete checkpoint of this job directory (bare path, file:// or s3:// URI)",
    );
    /// Who owns the restored snapshot.
    pub const RECOVERY_CLAIM_MODE: ConfigOption<String> = ConfigOption::new(
        "execution.state-recovery.claim-mode",
        "NO_CLAIM",
        Kind::Enum(&["NO_CLAIM", "CLAIM"]),
        "NO_CLAIM: the restored checkpoint is never deleted by this job; CLAIM: it becomes one of this job's retained checkpoints and is deleted once subsumed (savepoints are never deleted)",
    );
    /// S3 endpoint.
    pub const S3_ENDPOINT: ConfigOption<String> = ConfigOption::new(
        "s3.endpoint",
        "",
        Kind::Text,
        "S3-compatible server for s3:// checkpoint storage, e.g. http://127.0.0.1:9000 (empty: AWS_ENDPOINT, else AWS S3)",
    );
    /// S3 access key.
    pub const S3_ACCESS_KEY: ConfigOption<String> = ConfigOption::new(
        "s3.access-key",
        "",
        Kind::Text,
        "S3 access key id (empty: AWS_ACCESS_KEY_ID)",
    );
    /// S3 secret key.
    pub const S3_SECRET_KEY: ConfigOption<String> = ConfigOption::new(
        "s3.secret-key",
        "",
        Kind::Text,
        "S3 secret access key (empty: AWS_SECRET_ACCESS_KEY)",
    );
    /// S3 region.
    pub const S3_REGION: ConfigOption<String> = ConfigOption::new(
        "s3.region",
        "",
        Kind::Text,
        "S3 region (empty: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1)",
    );
    /// S3 path-style access.
    pub const S3_PATH_STYLE_ACCESS: ConfigOption<bool> = ConfigOption::new(
        "s3.path.style.access",
        "false",
        Kind::Bool,
        "address buckets as <endpoint>/<bucket> (most S3-compatible servers) instead of <bucket>.<endpoint> (AWS)",
    );
    /// Failover strategy.
    pub const FAILOVER_STRATEGY: ConfigOption<String> = ConfigOption::new(
        "jobmanager.execution.failover-strategy",
        "region",
        Kind::Enum(&["region", "full"]),
        "what a failure restarts: region restarts only the failed pipelined region, full the whole job",
    );
    /// Restart strategy.
    pub const RESTART_STRATEGY: ConfigOption<String> = ConfigOption::new(
        "restart-strategy.type",
        "",
        Kind::Enum(&[
            "",
            "none",
            "off",
            "disable",
            "fixed-delay",
            "fixeddelay",
            "failure-rate",
            "failurerate",
            "exponential-delay",
            "exponentialdelay",
        ]),
        "what a failure does: none fails the job; fixed-delay, failure-rate and exponential-delay restart it from the latest checkpoint; not set (\"\"): exponential-delay when checkpointing is on (execution.checkpointing.interval), none when it is off, as in Flink",
    );
    /// Fixed-delay attempts.
    pub const RESTART_ATTEMPTS: ConfigOption<u64> = ConfigOption::new(
        "restart-strategy.fixed-delay.attempts",
        "3",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "fixed-delay: restarts allowed before the job fails",
    );
    /// Fixed-delay delay.
    pub const RESTART_DELAY: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.fixed-delay.delay",
        "0ms",
        Kind::Duration,
        "fixed-delay: pause before each restart",
    );
    /// Failure-rate: failures per interval.
    pub const RESTART_FAILURE_RATE_MAX: ConfigOption<u64> = ConfigOption::new(
        "restart-strategy.failure-rate.max-failures-per-interval",
        "1",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "failure-rate: failures tolerated within one interval; one more fails the job",
    );
    /// Failure-rate: interval.
    pub const RESTART_FAILURE_RATE_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.failure-rate.failure-rate-interval",
        "1min",
        Kind::Duration,
        "failure-rate: the sliding window failures are counted in",
    );
    /// Failure-rate: delay.
    pub const RESTART_FAILURE_RATE_DELAY: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.failure-rate.delay",
        "0ms",
        Kind::Duration,
        "failure-rate: pause before each restart",
    );
    /// Exponential-delay: initial backoff.
    pub const RESTART_EXP_INITIAL: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.exponential-delay.initial-backoff",
        "1s",
        Kind::Duration,
        "exponential-delay: pause before the first restart",
    );
    /// Exponential-delay: max backoff.
    pub const RESTART_EXP_MAX: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.exponential-delay.max-backoff",
        "1min",
        Kind::Duration,
        "exponential-delay: the longest pause",
    );
    /// Exponential-delay: multiplier.
    pub const RESTART_EXP_MULTIPLIER: ConfigOption<f64> = ConfigOption::new(
        "restart-strategy.exponential-delay.backoff-multiplier",
        "1.5",
        Kind::Float {
            min: 1.0,
            max: 1000.0,
        },
        "exponential-delay: factor applied to the pause after each restart",
    );
    /// Exponential-delay: jitter.
    pub const RESTART_EXP_JITTER: ConfigOption<f64> = ConfigOption::new(
        "restart-strategy.exponential-delay.jitter-factor",
        "0.1",
        Kind::Float { min: 0.0, max: 1.0 },
        "exponential-delay: random spread of each pause (0.1 = plus or minus 10 percent)",
    );
    /// Exponential-delay: reset threshold.
    pub const RESTART_EXP_RESET: ConfigOption<Duration> = ConfigOption::new(
        "restart-strategy.exponential-delay.reset-backoff-threshold",
        "1h",
        Kind::Duration,
        "exponential-delay: a failure this long after the previous one resets the pause and the attempts",
    );
    /// Exponential-delay: attempts.
    pub const RESTART_EXP_ATTEMPTS: ConfigOption<u64> = ConfigOption::new(
        "restart-strategy.exponential-delay.attempts-before-reset-backoff",
        "2147483647",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "exponential-delay: restarts allowed without a reset before the job fails",
    );
    /// Cancellation watchdog: report interval.
    pub const TASK_CANCELLATION_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "task.cancellation.interval",
        "30s",
        Kind::PositiveDuration,
        "while a subtask stopped for a restart still runs user code, log a warning naming it this often",
    );
    /// Cancellation watchdog: timeout.
    pub const TASK_CANCELLATION_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "task.cancellation.timeout",
        "180s",
        Kind::Duration,
        "a subtask stopped for a restart that still runs user code this long fails the job, naming the subtask (instead of a restart that waits forever); 0 waits forever",
    );
    /// Chaos: kill interval.
    pub const CHAOS_KILL_INTERVAL: ConfigOption<Option<Duration>> = ConfigOption::new(
        "chaos.kill-interval",
        "off",
        Kind::DurationOrOff,
        "kill a random subtask after each such span of running without a kill or a recovery (failure testing); off disables. Each kill is a failure for the restart strategy: the default (exponential-delay) pauses 1 s before the first restart, growing to 1 min; for fast chaos runs set restart-strategy.exponential-delay.initial-backoff: 10ms and .max-backoff: 100ms (or restart-strategy.type: fixed-delay with a large .attempts)",
    );
    /// Chaos: seed.
    pub const CHAOS_SEED: ConfigOption<u64> = ConfigOption::new(
        "chaos.seed",
        "0",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "seed of the random choice of subtasks to kill",
    );
    /// Chaos: kill only once a checkpoint completed since the last recovery.
    pub const CHAOS_WAIT_FOR_CHECKPOINT: ConfigOption<bool> = ConfigOption::new(
        "chaos.wait-for-checkpoint",
        "false",
        Kind::Bool,
        "before each kill wait for a completed checkpoint (the restored subtasks run), then the kill interval, then one more completed checkpoint, so every kill leaves progress behind even when checkpoints or restores take longer than the interval",
    );
    /// Chaos: targets.
    pub const CHAOS_TARGETS: ConfigOption<String> = ConfigOption::new(
        "chaos.targets",
        "all",
        Kind::Text,
        "operators whose subtasks may be killed: all, or names separated by commas",
    );
    /// Cluster mode: where the job runs.
    pub const EXECUTION_TARGET: ConfigOption<String> = ConfigOption::new(
        "execution.target",
        "local",
        Kind::Enum(&["local", "cluster"]),
        "local: the whole job runs in this process; cluster: this process is the JobManager or a TaskManager of a cluster (cluster.role, or the examples' --jobmanager / --taskmanager flags)",
    );
    /// Cluster mode: this process's role.
    pub const CLUSTER_ROLE: ConfigOption<String> = ConfigOption::new(
        "cluster.role",
        "",
        Kind::Enum(&["", "jobmanager", "taskmanager"]),
        "with execution.target: cluster, what this process is: jobmanager (schedules the job, runs the checkpoint coordinator and the REST API) or taskmanager (runs the subtasks it is given); the examples' --jobmanager and --taskmanager flags set it",
    );
    /// Cluster mode: the JobManager's RPC host.
    pub const JOBMANAGER_RPC_ADDRESS: ConfigOption<String> = ConfigOption::new(
        "jobmanager.rpc.address",
        "127.0.0.1",
        Kind::Text,
        "host name or IP address of the JobManager's RPC endpoint: TaskManagers connect to it; the JobManager binds it (0.0.0.0 binds every interface, and then TaskManagers need the real address)",
    );
    /// Cluster mode: the JobManager's RPC port.
    pub const JOBMANAGER_RPC_PORT: ConfigOption<u64> = ConfigOption::new(
        "jobmanager.rpc.port",
        "6123",
        Kind::Int { min: 1, max: 65535 },
        "port of the JobManager's RPC endpoint (gRPC): TaskManagers register there",
    );
    /// Cluster mode: slots a TaskManager offers.
    pub const TASKMANAGER_SLOTS: ConfigOption<usize> = ConfigOption::new(
        "taskmanager.numberOfTaskSlots",
        "1",
        Kind::Int { min: 1, max: 1024 },
        "slots a TaskManager offers; a slot runs one parallel slice of the job (subtask i of every operator), so a job of parallelism p needs p slots over all TaskManagers",
    );
    /// Cluster mode: the TaskManager's own address.
    pub const TASKMANAGER_HOST: ConfigOption<String> = ConfigOption::new(
        "taskmanager.host",
        "127.0.0.1",
        Kind::Text,
        "host name or IP address this TaskManager binds its data port to and that other TaskManagers connect to",
    );
    /// Cluster mode: the TaskManager's data port.
    pub const TASKMANAGER_DATA_PORT: ConfigOption<u64> = ConfigOption::new(
        "taskmanager.data.port",
        "0",
        Kind::Int { min: 0, max: 65535 },
        "TCP port of this TaskManager's data plane (records between subtasks on different TaskManagers); 0: any free port",
    );
    /// Cluster mode: heartbeat interval.
    pub const HEARTBEAT_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "heartbeat.interval",
        "1s",
        Kind::PositiveDuration,
        "how often the JobManager and its TaskManagers send each other a heartbeat (Flink: 10s)",
    );
    /// Cluster mode: heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "heartbeat.timeout",
        "10s",
        Kind::PositiveDuration,
        "a TaskManager silent this long is lost (its subtasks fail over); a JobManager silent this long makes its TaskManagers cancel their subtasks and, unless it comes back as long again, exit (Flink: 50s). A broken connection is seen at once",
    );
    /// Cluster mode: how long the JobManager waits for slots.
    pub const SLOT_REQUEST_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "slot.request.timeout",
        "5min",
        Kind::PositiveDuration,
        "how long the JobManager waits for TaskManagers to offer the slots a deployment needs (at start and after a TaskManager was lost) before the attempt fails",
    );
    /// High availability: off, or kept in the checkpoint storage.
    pub const HA_TYPE: ConfigOption<String> = ConfigOption::new(
        "high-availability.type",
        "none",
        Kind::Enum(&["none", "storage"]),
        "none: every run is a new job (random job id); storage: the job id is derived from high-availability.cluster-id and the job name, a (re)started process resumes from the job's latest complete checkpoint without -s, and leadership is taken and fenced through a create-only log in high-availability.storageDir (no ZooKeeper); needs checkpointing on",
    );
    /// High availability: the id of this cluster (or single-process job).
    pub const HA_CLUSTER_ID: ConfigOption<String> = ConfigOption::new(
        "high-availability.cluster-id",
        "default",
        Kind::Text,
        "with high-availability.type: storage, names this cluster: the job id is derived from it and the job name, so two deployments of one job need two cluster ids (letters, digits, '-', '_', '.')",
    );
    /// High availability: where the leadership log lives.
    pub const HA_STORAGE_DIR: ConfigOption<String> = ConfigOption::new(
        "high-availability.storageDir",
        "",
        Kind::Text,
        "with high-availability.type: storage, the directory (path, file:// or s3:// URI) of the leadership log; empty: the checkpoint directory (execution.checkpointing.dir); every process of the job must see the same one",
    );
    /// REST API and web UI: on or off.
    pub const REST_ENABLED: ConfigOption<bool> = ConfigOption::new(
        "rest.enabled",
        "false",
        Kind::Bool,
        "serve the REST API, the web UI and /metrics while jobs run (wordcount turns it on)",
    );
    /// REST API: the address to bind.
    pub const REST_ADDRESS: ConfigOption<String> = ConfigOption::new(
        "rest.address",
        "127.0.0.1",
        Kind::Address,
        "address the REST server binds to: 127.0.0.1 serves this machine only, 0.0.0.0 every interface",
    );
    /// REST API: the port.
    pub const REST_PORT: ConfigOption<u64> = ConfigOption::new(
        "rest.port",
        "8081",
        Kind::Int { min: 0, max: 65535 },
        "port of the REST server and web UI (0: any free port)",
    );
    /// REST API: how long a job's end waits for clients to read results.
    pub const REST_RESULT_LINGER: ConfigOption<Duration> = ConfigOption::new(
        "rest.async.result-linger",
        "5s",
        Kind::Duration,
        "after a job ends, how long it waits (holding its process and REST server up) for clients to read the results of savepoints, stops, triggered checkpoints and cancels they asked for; 0s: no wait",
    );
    /// How often wordcount-style examples print progress.
    pub const PROGRESS_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "client.progress-interval",
        "1s",
        Kind::Duration,
        "how often examples print progress (records/s)",
    );

    /// Trace export: `true` turns it off whatever else is set.
    pub const OTEL_SDK_DISABLED: ConfigOption<bool> = ConfigOption::new(
        "otel.sdk.disabled",
        "false",
        Kind::Bool,
        "true turns trace and metric export off whatever else is set (OTEL_SDK_DISABLED)",
    );
    /// The OTLP collector's base URL; empty: no export.
    pub const OTEL_ENDPOINT: ConfigOption<String> = ConfigOption::new(
        "otel.exporter.otlp.endpoint",
        "",
        Kind::Endpoint,
        "OTLP collector URL (grpc: http://localhost:4317, http/protobuf: http://localhost:4318); empty: traces and metrics off (OTEL_EXPORTER_OTLP_ENDPOINT)",
    );
    /// The OTLP transport.
    pub const OTEL_PROTOCOL: ConfigOption<String> = ConfigOption::new(
        "otel.exporter.otlp.protocol",
        "http/protobuf",
        Kind::Enum(&["grpc", "http/protobuf"]),
        "OTLP transport: grpc or http/protobuf (OTEL_EXPORTER_OTLP_PROTOCOL)",
    );
    /// Timeout of one export request.
    pub const OTEL_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "otel.exporter.otlp.timeout",
        "10s",
        Kind::Duration,
        "longest wait for one export request to the collector (OTEL_EXPORTER_OTLP_TIMEOUT)",
    );
    /// `service.name` of the exported spans.
    pub const OTEL_SERVICE_NAME: ConfigOption<String> = ConfigOption::new(
        "otel.service.name",
        "weir",
        Kind::Text,
        "service.name resource attribute of the exported spans and metrics (OTEL_SERVICE_NAME)",
    );
    /// Batch span processor: export delay.
    pub const OTEL_BSP_SCHEDULE_DELAY: ConfigOption<Duration> = ConfigOption::new(
        "otel.bsp.schedule-delay",
        "5s",
        Kind::Duration,
        "longest time a finished span waits in the queue before it is exported (OTEL_BSP_SCHEDULE_DELAY)",
    );
    /// Batch span processor: queue bound.
    pub const OTEL_BSP_MAX_QUEUE_SIZE: ConfigOption<usize> = ConfigOption::new(
        "otel.bsp.max-queue-size",
        "2048",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        "spans waiting for export; more are dropped and counted, never waited for (OTEL_BSP_MAX_QUEUE_SIZE)",
    );
    /// Batch span processor: spans per request.
    pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: ConfigOption<usize> = ConfigOption::new(
        "otel.bsp.max-export-batch-size",
        "512",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        "spans per export request, at most otel.bsp.max-queue-size (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)",
    );
    /// How often the job's metrics are exported over OTLP.
    pub const OTEL_METRIC_EXPORT_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "otel.metric.export-interval",
        "10s",
        Kind::PositiveDuration,
        "how often the job's metrics are exported over OTLP, more than 0 (OTEL_METRIC_EXPORT_INTERVAL, ms)",
    );
    /// How long the end of a job waits for the last spans to be exported.
    pub const OTEL_FLUSH_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "otel.flush-timeout",
        "2s",
        Kind::Duration,
        "at job end: longest wait for the queued spans and the last metrics to be exported (the job's result never waits longer)",
    );
    /// How often dropped spans and failed exports are logged, at most.
    pub const OTEL_DROP_LOG_INTERVAL: ConfigOption<Duration> = ConfigOption::new(
        "otel.drop-log-interval",
        "10s",
        Kind::Duration,
        "dropped spans and failed exports are counted and logged at most once per this interval",
    );
    /// Detail of checkpoint traces.
    pub const TRACES_SPAN_DETAIL: ConfigOption<String> = ConfigOption::new(
        "traces.checkpoint.span-detail-level",
        "CHILDREN_SPANS_PER_SUBTASK",
        Kind::Enum(&[
            "SPAN_PER_CHECKPOINT",
            "SPAN_PER_CHECKPOINT_WITH_TASKS",
            "CHILDREN_SPANS_PER_TASK",
            "CHILDREN_SPANS_PER_SUBTASK",
        ]),
        "how much of a checkpoint each trace shows: SPAN_PER_CHECKPOINT (the root span only), SPAN_PER_CHECKPOINT_WITH_TASKS (the root with per-task arrays), CHILDREN_SPANS_PER_TASK (plus one child span per task), CHILDREN_SPANS_PER_SUBTASK (plus one span per subtask under its task, with the subtask's phases under it; weir's default, Flink's is SPAN_PER_CHECKPOINT)",
    );

    /// OpenTelemetry's standard environment variables and the options they
    /// set (weir's own `WEIR_OTEL_*` variables win over them).
    pub const OTEL_ENV: &[(&str, &str)] = &[
        ("OTEL_SDK_DISABLED", OTEL_SDK_DISABLED.def.key),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", OTEL_ENDPOINT.def.key),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", OTEL_PROTOCOL.def.key),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", OTEL_TIMEOUT.def.key),
        ("OTEL_SERVICE_NAME", OTEL_SERVICE_NAME.def.key),
        ("OTEL_BSP_SCHEDULE_DELAY", OTEL_BSP_SCHEDULE_DELAY.def.key),
        ("OTEL_BSP_MAX_QUEUE_SIZE", OTEL_BSP_MAX_QUEUE_SIZE.def.key),
        (
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE.def.key,
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            OTEL_METRIC_EXPORT_INTERVAL.def.key,
        ),
    ];

    /// Kafka brokers, `host:port[,host:port...]` (`--kafka-brokers` of the examples).
    pub const KAFKA_BOOTSTRAP_SERVERS: ConfigOption<String> = ConfigOption::new(
        "kafka.properties.bootstrap.servers",
        "",
        Kind::Text,
        "Kafka brokers host:port[,host:port...] of the Kafka source and sink (any other kafka.properties.<name> is passed to librdkafka as it is)",
    );
    /// Consumer group of the Kafka source.
    pub const KAFKA_GROUP_ID: ConfigOption<String> = ConfigOption::new(
        "kafka.properties.group.id",
        "",
        Kind::Text,
        "consumer group the Kafka source commits its checkpointed offsets to, for monitoring only (empty: weir-<first topic>)",
    );
    /// Where a Kafka source starts when it is not restored.
    pub const KAFKA_STARTUP_MODE: ConfigOption<String> = ConfigOption::new(
        "kafka.scan.startup.mode",
        "earliest-offset",
        Kind::Enum(&["earliest-offset", "latest-offset", "group-offsets", "timestamp"]),
        "where a Kafka source starts when not restored from a checkpoint: earliest-offset, latest-offset, group-offsets (the group's committed offsets; kafka.properties.auto.offset.reset earliest or latest where there are none, none to fail) or timestamp",
    );
    /// The start time of `kafka.scan.startup.mode: timestamp`.
    pub const KAFKA_STARTUP_TIMESTAMP: ConfigOption<i64> = ConfigOption::new(
        "kafka.scan.startup.timestamp-millis",
        "0",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "with kafka.scan.startup.mode: timestamp, the first record read from each partition is the first with a timestamp at or after this (ms since the epoch)",
    );
    /// Whether a Kafka source ends.
    pub const KAFKA_BOUNDED_MODE: ConfigOption<String> = ConfigOption::new(
        "kafka.scan.bounded.mode",
        "unbounded",
        Kind::Enum(&["unbounded", "latest-offset"]),
        "unbounded, or latest-offset: the source ends at the end offsets its partitions had when the job first started (kept in checkpoints)",
    );
    /// How often a Kafka source looks for new partitions.
    pub const KAFKA_DISCOVERY_INTERVAL: ConfigOption<Option<Duration>> = ConfigOption::new(
        "kafka.scan.topic-partition-discovery.interval",
        "5min",
        Kind::DurationOrOff,
        "how often a Kafka source looks for new partitions of its topics (read from the earliest offset), or off",
    );
    /// What a Kafka source does with a record its deserializer rejects.
    pub const KAFKA_DESERIALIZATION_ERRORS: ConfigOption<String> = ConfigOption::new(
        "kafka.scan.deserialization-errors",
        "fail",
        Kind::Enum(&["fail", "skip", "dead-letter"]),
        "a record the deserializer rejects: fail (the job fails naming topic, partition and offset), skip (counted in numRecordsInErrors) or dead-letter (copied to kafka.scan.dead-letter-topic, and counted)",
    );
    /// The dead-letter topic.
    pub const KAFKA_DEAD_LETTER_TOPIC: ConfigOption<String> = ConfigOption::new(
        "kafka.scan.dead-letter-topic",
        "",
        Kind::Text,
        "topic that rejected records are copied to with kafka.scan.deserialization-errors: dead-letter (at least once)",
    );
    /// The Kafka sink's guarantee.
    pub const KAFKA_DELIVERY_GUARANTEE: ConfigOption<String> = ConfigOption::new(
        "kafka.sink.delivery-guarantee",
        "exactly-once",
        Kind::Enum(&["exactly-once", "at-least-once", "none"]),
        "exactly-once (a Kafka transaction per completed checkpoint; needs checkpointing), at-least-once (flushed at every checkpoint) or none",
    );
    /// The prefix of the Kafka sink's transactional ids.
    pub const KAFKA_TRANSACTIONAL_ID_PREFIX: ConfigOption<String> = ConfigOption::new(
        "kafka.sink.transactional-id-prefix",
        "",
        Kind::Text,
        "prefix of the exactly-once Kafka sink's transactional ids <prefix>-<subtask>; must be unique per job on the cluster (empty: weir-<first 8 characters of the job id>, kept across restores)",
    );
    /// The Kafka sink's transaction timeout.
    pub const KAFKA_TRANSACTION_TIMEOUT: ConfigOption<Duration> = ConfigOption::new(
        "kafka.sink.transaction-timeout",
        "1min",
        Kind::PositiveDuration,
        "transaction.timeout.ms of the exactly-once Kafka sink: a transaction lasts from the first record of a completed checkpoint's output to its commit; at most the broker's transaction.max.timeout.ms (15 min by default)",
    );

    /// Every option, in the order `conf/weir.yaml` lists them.
    pub const ALL: &[OptionDef] = &[
        PARALLELISM_DEFAULT.def,
        MAX_PARALLELISM.def,
        AUTO_WATERMARK_INTERVAL.def,
        BATCH_SIZE.def,
        SEGMENT_SIZE.def,
        SOURCE_BATCH_SIZE.def,
        BUFFERS_PER_CHANNEL.def,
        WORKER_THREADS.def,
        STATE_BACKEND.def,
        ROCKSDB_LOCALDIR.def,
        ROCKSDB_CACHE_ENTRIES.def,
        ROCKSDB_MEMORY_MANAGED.def,
        MANAGED_MEMORY_SIZE.def,
        ROCKSDB_MEMORY_FIXED_PER_SLOT.def,
        ROCKSDB_WRITE_BUFFER_RATIO.def,
        ROCKSDB_PARTITIONED_INDEX_FILTERS.def,
        CHECKPOINTING_INTERVAL.def,
        CHECKPOINTING_MODE.def,
        CHECKPOINTING_TIMEOUT.def,
        CHECKPOINTING_MIN_PAUSE.def,
        CHECKPOINTING_MAX_CONCURRENT.def,
        CHECKPOINTING_TOLERABLE_FAILURES.def,
        CHECKPOINTING_UNALIGNED.def,
        CHECKPOINTING_ALIGNED_TIMEOUT.def,
        CHECKPOINTING_DIR.def,
        CHECKPOINTING_NUM_RETAINED.def,
        CHECKPOINTING_RETENTION.def,
        CHECKPOINTING_INCREMENTAL.def,
        SAVEPOINT_DIR.def,
        RECOVERY_PATH.def,
        RECOVERY_CLAIM_MODE.def,
        S3_ENDPOINT.def,
        S3_ACCESS_KEY.def,
        S3_SECRET_KEY.def,
        S3_REGION.def,
        S3_PATH_STYLE_ACCESS.def,
        FAILOVER_STRATEGY.def,
        RESTART_STRATEGY.def,
        RESTART_ATTEMPTS.def,
        RESTART_DELAY.def,
        RESTART_FAILURE_RATE_MAX.def,
        RESTART_FAILURE_RATE_INTERVAL.def,
        RESTART_FAILURE_RATE_DELAY.def,
        RESTART_EXP_INITIAL.def,
        RESTART_EXP_MAX.def,
        RESTART_EXP_MULTIPLIER.def,
        RESTART_EXP_JITTER.def,
        RESTART_EXP_RESET.def,
        RESTART_EXP_ATTEMPTS.def,
        TASK_CANCELLATION_INTERVAL.def,
        TASK_CANCELLATION_TIMEOUT.def,
        CHAOS_KILL_INTERVAL.def,
        CHAOS_SEED.def,
        CHAOS_TARGETS.def,
        CHAOS_WAIT_FOR_CHECKPOINT.def,
        EXECUTION_TARGET.def,
        CLUSTER_ROLE.def,
        JOBMANAGER_RPC_ADDRESS.def,
        JOBMANAGER_RPC_PORT.def,
        TASKMANAGER_SLOTS.def,
        TASKMANAGER_HOST.def,
        TASKMANAGER_DATA_PORT.def,
        HEARTBEAT_INTERVAL.def,
        HEARTBEAT_TIMEOUT.def,
        SLOT_REQUEST_TIMEOUT.def,
        HA_TYPE.def,
        HA_CLUSTER_ID.def,
        HA_STORAGE_DIR.def,
        REST_ENABLED.def,
        REST_ADDRESS.def,
        REST_PORT.def,
        REST_RESULT_LINGER.def,
        PROGRESS_INTERVAL.def,
        OTEL_SDK_DISABLED.def,
        OTEL_ENDPOINT.def,
        OTEL_PROTOCOL.def,
        OTEL_TIMEOUT.def,
        OTEL_SERVICE_NAME.def,
        OTEL_BSP_SCHEDULE_DELAY.def,
        OTEL_BSP_MAX_QUEUE_SIZE.def,
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE.def,
        OTEL_METRIC_EXPORT_INTERVAL.def,
        OTEL_FLUSH_TIMEOUT.def,
        OTEL_DROP_LOG_INTERVAL.def,
        TRACES_SPAN_DETAIL.def,
        KAFKA_BOOTSTRAP_SERVERS.def,
        KAFKA_GROUP_ID.def,
        KAFKA_STARTUP_MODE.def,
        KAFKA_STARTUP_TIMESTAMP.def,
        KAFKA_BOUNDED_MODE.def,
        KAFKA_DISCOVERY_INTERVAL.def,
        KAFKA_DESERIALIZATION_ERRORS.def,
        KAFKA_DEAD_LETTER_TOPIC.def,
        KAFKA_DELIVERY_GUARANTEE.def,
        KAFKA_TRANSACTIONAL_ID_PREFIX.def,
        KAFKA_TRANSACTION_TIMEOUT.def,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_valid() {
        for d in options::ALL {
            assert!(
                d.kind.check(d.default).is_ok(),
                "{} default {}",
                d.key,
                d.default
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1 s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("10min"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1 fortnight"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("32kb"), Some(32 * 1024));
        assert_eq!(parse_memory_size("64 MB"), Some(64 << 20));
        assert_eq!(parse_memory_size("1g"), Some(1 << 30));
        assert_eq!(parse_memory_size("512"), Some(512));
        assert_eq!(parse_memory_size("512b"), Some(512));
        assert_eq!(parse_memory_size("2 kib"), Some(2048));
        assert_eq!(parse_memory_size("32 xb"), None);
        assert_eq!(parse_memory_size("kb"), None);
        assert_eq!(parse_memory_size("-1kb"), None);
        assert_eq!(parse_memory_size("99999999999tb"), None, "overflow");
    }

    #[test]
    fn a_bad_segment_size_names_the_key_value_and_accepted_values() {
        let mut c = Conf::defaults();
        let e = c
            .set(options::SEGMENT_SIZE.def.key, "32 xb")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("taskmanager.memory.segment-size")
                && e.contains("32 xb")
                && e.contains("32kb"),
            "{e}"
        );
        c.set(options::SEGMENT_SIZE.def.key, "64kb").unwrap();
        assert_eq!(c.get(&options::SEGMENT_SIZE), MemorySize(64 * 1024));
    }

    #[test]
    fn suggestion_for_typo() {
        assert_eq!(suggest("parallelism.defualt"), Some("parallelism.default"));
        assert_eq!(suggest("completely.different.thing"), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint(""), Some(None));
        assert_eq!(
            parse_endpoint("http://localhost:4317/"),
            Some(Some("http://localhost:4317".into()))
        );
        assert_eq!(
            parse_endpoint("http://collector"),
            Some(Some("http://collector".into()))
        );
        assert_eq!(parse_endpoint("https://collector:4317"), None);
        assert_eq!(parse_endpoint("localhost:4317"), None);
        assert_eq!(parse_endpoint("http://localhost:99999"), None);
        assert_eq!(parse_endpoint("http://"), None);
    }

    #[test]
    fn otel_variables_set_otel_options_and_weir_variables_win() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let conf = Conf::load_from(
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "svc"),
                ("WEIR_OTEL_SERVICE_NAME", "mine"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "2500"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(conf.get(&options::OTEL_ENDPOINT), "http://127.0.0.1:4317");
        // The standard's unit: milliseconds.
        assert_eq!(
            conf.get(&options::OTEL_METRIC_EXPORT_INTERVAL),
            Duration::from_millis(2500)
        );
        assert_eq!(conf.get(&options::OTEL_PROTOCOL), "grpc");
        assert_eq!(conf.get(&options::OTEL_SERVICE_NAME), "mine");
        let err = Conf::load_from(
            None,
            &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("grpc, http/protobuf"),
            "{err}"
        );
    }

    #[test]
    fn rocksdb_backend_needs_the_feature() {
        let r = Conf::defaults()
            .set("state.backend.type", "RocksDB")
            .map(|_| ());
        if cfg!(feature = "rocksdb") {
            assert!(r.is_ok());
        } else {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("--features rocksdb"), "{msg}");
            assert!(msg.contains("state.backend.type"), "{msg}");
        }
        let bad = Conf::defaults()
            .set("state.backend.type", "memory")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(bad.contains("hashmap, rocksdb"), "{bad}");
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_name("pipeline.max-parallelism"),
            "WEIR_PIPELINE_MAX_PARALLELISM"
        );
    }
}
