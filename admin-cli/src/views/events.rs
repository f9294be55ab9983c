//! JSON view of an event.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::non_empty;
use crate::output::rfc3339;

/// An event of `geppetto events`.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Increasing; `--after ID` resumes after it.
    pub id: u64,
    pub at: Option<String>,
    /// `subject.change`, e.g. `run.succeeded`, `job.failed`, `puppet.offline`.
    pub kind: String,
    /// What it is about, `null` when it does not apply.
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub puppet: Option<String>,
    pub resource: Option<String>,
    /// A user, `puppet:NAME`, or `puppeteer`.
    pub actor: String,
    pub summary: String,
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        EventView {
            id: e.id,
            at: rfc3339(e.at.as_ref()),
            kind: e.kind.clone(),
            job_id: non_empty(&e.job_id),
            run_id: non_empty(&e.run_id),
            puppet: non_empty(&e.puppet),
            resource: non_empty(&e.resource),
            actor: e.actor.clone(),
            summary: e.summary.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn event_json() {
        let event = pb::Event {
            id: 7,
            at: ts(1_700_000_000),
            kind: "run.succeeded".into(),
            job_id: "job-1".into(),
            run_id: "run-a".into(),
            puppet: "web-1".into(),
            actor: "puppet:web-1".into(),
            summary: "run-a on web-1 succeeded".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(EventView::from(&event)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": 7,
                "at": "2023-11-14T22:13:20Z",
                "kind": "run.succeeded",
                "job_id": "job-1",
                "run_id": "run-a",
                "puppet": "web-1",
                "resource": null,
                "actor": "puppet:web-1",
                "summary": "run-a on web-1 succeeded",
            })
        );
    }
}
