//! The event stream service, and the events the api layer announces.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::events_server::Events;
use tonic::{Request, Response, Status};

use super::error::{ApiError, ApiResult};
use super::{AppState, Shared};
use crate::domain::Event;
use crate::selector::Selector;

pub use crate::app::events::{EVENTS_KEY, event};
/// The most events one `ListEvents` answer holds.
const PAGE_MAX: usize = 1000;
const BATCH: usize = 500;

/// Event kinds a watcher may name.
const MAX_KINDS: usize = 64;

/// What a watcher wants.
#[derive(Clone, Debug)]
struct Filter {
    kinds: Vec<String>,
    job_id: String,
    puppets: Option<Selector>,
}

impl Filter {
    fn from(req: &pb::WatchEventsRequest) -> ApiResult<Self> {
        let puppets = if req.puppet_selector.trim().is_empty() {
            None
        } else {
            Some(Selector::parse(&req.puppet_selector)?)
        };
        if !req.job_id.is_empty() {
            super::convert::id_of_kind("job", &req.job_id)?;
        }
        // Each event is matched against every kind a watcher names.
        if req.kinds.len() > MAX_KINDS || req.kinds.iter().any(|k| k.len() > 100) {
            return Err(super::error::invalid(format!(
                "a filter names at most {MAX_KINDS} event kinds of at most 100 bytes each"
            )));
        }
        Ok(Filter {
            kinds: req.kinds.clone(),
            job_id: req.job_id.clone(),
            puppets,
        })
    }

    fn keeps(&self, state: &AppState, e: &Event) -> bool {
        let kind_ok = self.kinds.is_empty()
            || self.kinds.iter().any(|k| {
                if k.ends_with('.') {
                    e.kind.starts_with(k.as_str())
                } else {
                    e.kind == *k
                }
            });
        let job_ok = self.job_id.is_empty() || e.job_id == self.job_id;
        let puppet_ok = match &self.puppets {
            None => true,
            Some(selector) => {
                !e.puppet.is_empty()
                    && state
                        .store
                        .get_puppet(&e.puppet)
                        .is_ok_and(|p| selector.matches(&p.labels()))
            }
        };
        kind_ok && job_ok && puppet_ok
    }
}

/// Refuses to resume from an event already pruned.
fn check_resume(state: &AppState, after: u64) -> ApiResult<()> {
    let oldest = state.store.oldest_event_id()?;
    if after != 0 && after + 1 < oldest {
        return Err(ApiError::Conflict(format!(
            "events up to {} were pruned (kept for a bounded time); the oldest kept is {oldest}: resume from there",
            oldest - 1
        )));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct EventsApi {
    state: Shared,
}

impl EventsApi {
    pub fn new(state: Shared) -> Self {
        EventsApi { state }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsApi {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.state.authorize(&request, "Events/WatchEvents")?;
        let req = request.into_inner();
        let filter = Filter::from(&req)?;
        check_resume(&self.state, req.after_id)?;
        let start = if req.after_id == 0 && !req.from_start {
            self.state.store.last_event_id().map_err(ApiError::from)?
        } else {
            req.after_id
        };
        let state = self.state.clone();
        let notify = state.hub.subscribe(EVENTS_KEY);
        // Each step sends the next matching event, reading the store in
        // batches and waiting for appends when it is at the end.
        let stream = futures_util::stream::unfold(
            (start, std::collections::VecDeque::<Event>::new()),
            move |(mut after, mut pending)| {
                let state = state.clone();
                let notify = notify.clone();
                let filter = filter.clone();
                async move {
                    loop {
                        if let Some(e) = pending.pop_front() {
                            return Some((Ok(pb::Event::from(&e)), (after, pending)));
                        }
                        let notified = notify.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        let batch = match state.store.events_after(after, BATCH) {
                            Ok(b) => b,
                            Err(e) => {
                                return Some((Err(ApiError::from(e).into()), (after, pending)));
                            }
                        };
                        if let Some(last) = batch.last() {
                            after = last.id;
                            pending.extend(batch.into_iter().filter(|e| filter.keeps(&state, e)));
                            continue;
                        }
                        tokio::select! {
                            _ = &mut notified => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = state.shutdown.cancelled() => return None,
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.state.authorize(&request, "Events/ListEvents")?;
        let req = request.into_inner();
        let filter = Filter::from(&req)?;
        check_resume(&self.state, req.after_id)?;
        // A page holds at most PAGE_MAX events, whatever the limit: a
        // client wanting more asks again after the last id it received.
        let limit = match req.limit {
            0 => PAGE_MAX,
            n => (n as usize).min(PAGE_MAX),
        };
        let mut events = Vec::new();
        let mut after = req.after_id;
        loop {
            let batch = self
                .state
                .store
                .events_after(after, BATCH)
                .map_err(ApiError::from)?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            for e in batch {
                if filter.keeps(&self.state, &e) {
                    events.push(pb::Event::from(&e));
                }
            }
            if events.len() >= limit {
                events.truncate(limit);
                break;
            }
        }
        Ok(Response::new(pb::ListEventsResponse {
            events,
            oldest_id: self.state.store.oldest_event_id().map_err(ApiError::from)?,
        }))
    }
}
