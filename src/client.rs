//! A small blocking client of weir's REST API, for the `weir` CLI's remote
//! commands (`list`, `checkpoint`, `savepoint`, `cancel`, `kill`).
//!
//! Every failure is a [`ClientError`] with one clear line: the server is not
//! reachable (with the URL and a hint), the server refused the request (its
//! `{"errors": [...]}` message), or it answered something unexpected.

use std::time::Duration;

use serde_json::Value;

/// The default address of the REST API (`rest.address`:`rest.port`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server answers at the URL.
    #[error("cannot reach the weir REST API at {url}: {reason} (is a job running with rest.enabled? use --url to point elsewhere)")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server answered something that is not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The request's URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The job names no job, or several.
    #[error("{0}")]
    Job(String),
}

/// A client of one REST server.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns the JSON body of a 2xx answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("PATCH", _) => self.agent.patch(&url).send_empty(),
            _ => {
                return Err(ClientError::BadResponse {
                    url,
                    reason: format!("method {method} is not used by this client"),
                })
            }
        };
        let mut resp = sent.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::BadResponse {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            let message = json
                .as_ref()
                .and_then(|v| v["errors"].as_array())
                .map(|e| {
                    e.iter()
                        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| format!("HTTP {status} from {url}"));
            return Err(ClientError::Api { status, message });
        }
        Ok(json.unwrap_or(Value::Null))
    }

    /// Every job the server knows (`/jobs/overview`), newest first.
    pub fn jobs(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.request("GET", "/jobs/overview", None)?;
        v["jobs"]
            .as_array()
            .cloned()
            .ok_or_else(|| ClientError::BadResponse {
                url: format!("{}/jobs/overview", self.base),
                reason: "no jobs array".into(),
            })
    }

    /// The id of the job called `job`: an id, a unique id prefix, or a job
    /// name (a running job of that name first).
    pub fn resolve_job(&self, job: &str) -> Result<String, ClientError> {
        let jobs = self.jobs()?;
        let id = |j: &Value| j["jid"].as_str().unwrap_or_default().to_string();
        if let Some(j) = jobs.iter().find(|j| id(j) == job) {
            return Ok(id(j));
        }
        let by_prefix: Vec<&Value> = jobs
            .iter()
            .filter(|j| !job.is_empty() && id(j).starts_with(job))
            .collect();
        let by_name: Vec<&Value> = jobs.iter().filter(|j| j["name"] == job).collect();
        let running_by_name: Vec<&Value> = by_name
            .iter()
            .copied()
            .filter(|j| {
                !["FINISHED", "FAILED", "CANCELED"].contains(&j["state"].as_str().unwrap_or(""))
            })
            .collect();
        let pick = |c: &[&Value]| -> Option<Result<String, ClientError>> {
            match c {
                [] => None,
                [one] => Some(Ok(id(one))),
                many => Some(Err(ClientError::Job(format!(
                    "'{job}' matches {} jobs ({}): give more of the job id",
                    many.len(),
                    many.iter().map(|j| id(j)).collect::<Vec<_>>().join(", ")
                )))),
            }
        };
        pick(&by_prefix)
            .or_else(|| pick(&running_by_name))
            .or_else(|| pick(&by_name))
            .unwrap_or_else(|| {
                Err(ClientError::Job(format!(
                    "no job '{job}' at {} (`weir list` shows the jobs)",
                    self.base
                )))
            })
    }
}

/// A subtask as `name[index]` or `name/index`.
pub fn parse_subtask(s: &str) -> Result<(String, usize), String> {
    let (name, index) = if let Some(rest) = s.strip_suffix(']') {
        rest.rsplit_once('[')
            .ok_or_else(|| format!("bad subtask '{s}': expected name[index] or name/index"))?
    } else {
        s.rsplit_once('/')
            .ok_or_else(|| format!("bad subtask '{s}': expected name[index] or name/index"))?
    };
    let index = index
        .trim()
        .parse()
        .map_err(|_| format!("bad subtask '{s}': '{index}' is not a subtask index"))?;
    if name.is_empty() {
        return Err(format!("bad subtask '{s}': no operator name"));
    }
    Ok((name.to_string(), index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtasks() {
        assert_eq!(parse_subtask("count[1]"), Ok(("count".into(), 1)));
        assert_eq!(parse_subtask("count/0"), Ok(("count".into(), 0)));
        assert_eq!(parse_subtask("a/b[2]"), Ok(("a/b".into(), 2)));
        assert!(parse_subtask("count").is_err());
        assert!(parse_subtask("count[x]").is_err());
        assert!(parse_subtask("[1]").is_err());
    }

    #[test]
    fn segments() {
        assert_eq!(encode_segment("Source: a b/c"), "Source%3A%20a%20b%2Fc");
        assert_eq!(encode_segment("count-1_x.y~"), "count-1_x.y~");
    }
}
