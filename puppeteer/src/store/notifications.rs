//! Notification rules and the deliveries owed.
//!
//! The notifier reads the event stream from a cursor kept in `meta`
//! (`notify_cursor`). The deliveries an event calls for are stored in the
//! same transaction that moves the cursor past it, and only if the cursor
//! is still where the notifier read it: across a crash, or two nodes that
//! both believe they lead, no event is matched twice or skipped. A
//! delivery's id is made of its event's id and its rule's id, so even a
//! second matching could not make a second delivery.
//!
//! A delivery stays in `deliveries` until it was sent (then it is removed
//! and counted on its rule) or given up. Before attempting one, a node
//! **claims** it: in one transaction it checks that it holds the leader's
//! lease now (on a shared store) and that no other live claim exists, and
//! writes its claim (node, term, until when on the database's clock). An
//! attempt is bounded well within the claim. The outcome is written only
//! if the stored claim is still the one the attempt was made under, so a
//! node deposed or paused mid-attempt can neither record nor count it
//! twice; another node attempts it again once the claim has lapsed. A
//! delivery therefore goes out twice only if its node died (or was paused
//! past its claim) after the receiver took it and before the outcome was
//! written; the stable id lets the receiver drop that copy.

use crate::store::Transactional;

use super::kv::{TxResult, TxTree};
use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{Delivery, DeliveryClaim, Millis, NotificationRule};

const CURSOR: &[u8] = b"notify_cursor";

impl Store {
    pub fn add_rule(&self, rule: &NotificationRule) -> Result<()> {
        self.rules.insert(rule.id.as_bytes(), encode(rule))?;
        Ok(())
    }

    pub fn list_rules(&self) -> Result<Vec<NotificationRule>> {
        let mut rules: Vec<NotificationRule> = self
            .rules
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_>>()?;
        rules.sort_by_key(|r| r.created_at);
        Ok(rules)
    }

    pub fn get_rule(&self, id: &str) -> Result<NotificationRule> {
        match self.rules.get(id)? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "notification rule",
                id: id.to_string(),
            }),
        }
    }

    pub fn remove_rule(&self, id: &str) -> Result<()> {
        if self.rules.remove(id)?.is_none() {
            return Err(StoreError::NotFound {
                kind: "notification rule",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// The last event id the notifier has matched.
    pub fn notify_cursor(&self) -> Result<Option<u64>> {
        Ok(self
            .meta
            .get(CURSOR)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
    }

    /// Stores deliveries and moves the cursor from `expected` to `cursor`,
    /// all or nothing; `false` (and nothing done) if the cursor was moved
    /// meanwhile, or if `leader` no longer holds the leader's lease.
    /// `leader` is this node on a shared store, `None` alone.
    pub fn queue_deliveries(
        &self,
        expected: Option<u64>,
        cursor: u64,
        deliveries: &[Delivery],
        leader: Option<&str>,
    ) -> Result<bool> {
        let now = self.now_ms()?;
        (&self.meta, &self.deliveries).transaction(|(meta, tree)| {
            let current = meta
                .get(CURSOR)?
                .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
            if current != expected || leader_term(meta, leader, now)?.is_none() {
                return Ok(false);
            }
            for d in deliveries {
                if tree.get(d.id.as_bytes())?.is_none() {
                    tree.insert(d.id.as_bytes(), encode(d))?;
                }
            }
            meta.insert(CURSOR, &cursor.to_be_bytes())?;
            Ok(true)
        })
    }

    /// Stores one delivery outside the event stream (a rule's test).
    pub fn queue_delivery(&self, delivery: &Delivery) -> Result<()> {
        self.deliveries
            .insert(delivery.id.as_bytes(), encode(delivery))?;
        Ok(())
    }

    /// Claims a delivery for an attempt by `leader` (this node on a shared
    /// store, `None` alone) for `hold_ms`: the delivery with its claim, or
    /// `None` if it is gone, claimed by a live claim, or this node does not
    /// lead.
    pub fn claim_delivery(
        &self,
        id: &str,
        leader: Option<&str>,
        hold_ms: i64,
    ) -> Result<Option<Delivery>> {
        let now = self.now_ms()?;
        (&self.meta, &self.deliveries).transaction(|(meta, tree)| {
            let Some(v) = tree.get(id.as_bytes())? else {
                return Ok(None);
            };
            let mut delivery: Delivery = match decode(id.as_bytes(), &v) {
                Ok(d) => d,
                Err(e) => return abort(e),
            };
            // Alone, no one else attempts it: a claim left by a crash of
            // this puppeteer does not delay the retry.
            if leader.is_some() && delivery.claim.as_ref().is_some_and(|c| c.until_ms > now) {
                return Ok(None);
            }
            let Some(term) = leader_term(meta, leader, now)? else {
                return Ok(None);
            };
            delivery.claim = Some(DeliveryClaim {
                node: leader.unwrap_or_default().to_string(),
                term,
                until_ms: now + hold_ms,
                nonce: rand::random(),
            });
            tree.insert(id.as_bytes(), encode(&delivery))?;
            Ok(Some(delivery))
        })
    }

    /// Every delivery still owed.
    pub fn pending_deliveries(&self) -> Result<Vec<Delivery>> {
        self.deliveries
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// A delivery went out: it is forgotten and counted on its rule. This
    /// and the two below return `false`, doing nothing, unless the stored
    /// delivery is still under the claim `delivery` carries.
    pub fn delivery_sent(&self, delivery: &Delivery) -> Result<bool> {
        self.delivery_done(delivery, None)
    }

    /// A delivery was given up: forgotten, counted and explained on its rule.
    pub fn delivery_failed(&self, delivery: &Delivery, error: &str, now: Millis) -> Result<bool> {
        self.delivery_done(delivery, Some((now, error.to_string())))
    }

    fn delivery_done(
        &self,
        delivery: &Delivery,
        failure: Option<(Millis, String)>,
    ) -> Result<bool> {
        (&self.rules, &self.deliveries).transaction(|(rules, tree)| {
            if !still_claimed(tree, delivery)? {
                return Ok(false);
            }
            tree.remove(delivery.id.as_bytes())?;
            if let Some(v) = rules.get(delivery.rule_id.as_bytes())? {
                let mut rule: NotificationRule = match decode(delivery.rule_id.as_bytes(), &v) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                match &failure {
                    None => rule.delivered += 1,
                    Some(f) => {
                        rule.failed += 1;
                        rule.last_error = Some(f.clone());
                    }
                }
                rules.insert(delivery.rule_id.as_bytes(), encode(&rule))?;
            }
            Ok(true)
        })
    }

    /// An attempt failed; the delivery is released, to be tried again at
    /// its `next_at`.
    pub fn delivery_retry(&self, delivery: &Delivery, now: Millis) -> Result<bool> {
        (&self.rules, &self.deliveries).transaction(|(rules, tree)| {
            if !still_claimed(tree, delivery)? {
                return Ok(false);
            }
            let released = Delivery {
                claim: None,
                ..delivery.clone()
            };
            tree.insert(delivery.id.as_bytes(), encode(&released))?;
            if let Some(v) = rules.get(delivery.rule_id.as_bytes())? {
                let mut rule: NotificationRule = match decode(delivery.rule_id.as_bytes(), &v) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                rule.last_error = delivery.last_error.clone().map(|e| (now, e));
                rules.insert(delivery.rule_id.as_bytes(), encode(&rule))?;
            }
            Ok(true)
        })
    }
}

/// The stored delivery is still under the claim `delivery` carries.
fn still_claimed(tree: &TxTree<'_>, delivery: &Delivery) -> TxResult<bool> {
    Ok(match tree.get(delivery.id.as_bytes())? {
        Some(v) => match decode::<Delivery>(delivery.id.as_bytes(), &v) {
            Ok(stored) => stored.claim == delivery.claim,
            Err(e) => return abort(e),
        },
        None => false,
    })
}

/// The term of `leader`'s live lease (`None` if it holds none at `now`);
/// alone (`leader` is `None`), always term 0.
fn leader_term(meta: &TxTree<'_>, leader: Option<&str>, now: i64) -> TxResult<Option<u64>> {
    let Some(node) = leader else {
        return Ok(Some(0));
    };
    Ok(match meta.get(super::cluster::LEASE)? {
        Some(v) => match decode::<super::cluster::NodeLease>(super::cluster::LEASE, &v) {
            Ok(l) if l.node == node && l.expires_ms > now => Some(l.term),
            Ok(_) => None,
            Err(e) => return abort(e),
        },
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use crate::domain::{Channel, Delivery, Event, Millis, NotificationRule};
    use crate::store::testing;

    fn rule() -> NotificationRule {
        NotificationRule {
            id: "ntf-1".into(),
            on: vec!["job.".into()],
            channel: Channel::Webhook {
                url: "https://example.org/hook".into(),
                secret: None,
            },
            target: String::new(),
            created_at: Millis(0),
            delivered: 0,
            failed: 0,
            last_error: None,
        }
    }

    fn delivery(event: u64) -> Delivery {
        Delivery {
            id: format!("dlv-{event}-ntf-1"),
            rule_id: "ntf-1".into(),
            event: Event {
                id: event,
                kind: "job.failed".into(),
                ..Event::default()
            },
            created_at: Millis(0),
            attempts: 0,
            next_at: Millis(0),
            last_error: None,
            claim: None,
        }
    }

    #[test]
    fn the_cursor_moves_only_from_where_it_was_read() {
        for (_engine, store) in testing::stores() {
            assert!(store.queue_deliveries(None, 5, &[], None).unwrap());
            // A second matcher that read "no cursor" is refused.
            assert!(
                !store
                    .queue_deliveries(None, 9, &[delivery(9)], None)
                    .unwrap()
            );
            assert!(
                store
                    .queue_deliveries(Some(5), 7, &[delivery(6)], None)
                    .unwrap()
            );
            // Another that read 5 too (a deposed leader) adds nothing.
            assert!(
                !store
                    .queue_deliveries(Some(5), 7, &[delivery(7)], None)
                    .unwrap()
            );
            assert_eq!(store.notify_cursor().unwrap(), Some(7));
            let ids: Vec<String> = store
                .pending_deliveries()
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect();
            assert_eq!(ids, ["dlv-6-ntf-1"]);
        }
    }

    #[test]
    fn only_the_leader_queues_and_claims_and_a_lapsed_claim_records_nothing() {
        for (_engine, store) in testing::stores() {
            store.add_rule(&rule()).unwrap();
            store.hold_lease("a", 60_000).unwrap().unwrap();
            assert!(
                !store
                    .queue_deliveries(None, 1, &[delivery(1)], Some("b"))
                    .unwrap(),
                "b does not lead"
            );
            assert!(
                store
                    .queue_deliveries(None, 1, &[delivery(1)], Some("a"))
                    .unwrap()
            );
            let id = "dlv-1-ntf-1";
            assert!(
                store
                    .claim_delivery(id, Some("b"), 30_000)
                    .unwrap()
                    .is_none()
            );
            // a claims it, for a claim already lapsed (as if a were paused
            // past it), and loses the lease to b.
            let by_a = store.claim_delivery(id, Some("a"), -1).unwrap().unwrap();
            assert_eq!(by_a.claim.as_ref().unwrap().term, 1);
            store.hold_lease("a", -1).unwrap();
            assert_eq!(store.hold_lease("b", 60_000).unwrap().unwrap().term, 2);
            assert!(
                store
                    .claim_delivery(id, Some("a"), 30_000)
                    .unwrap()
                    .is_none(),
                "a no longer leads"
            );
            let by_b = store
                .claim_delivery(id, Some("b"), 30_000)
                .unwrap()
                .unwrap();
            assert_eq!(by_b.claim.as_ref().unwrap().node, "b");
            assert!(
                store
                    .claim_delivery(id, Some("b"), 30_000)
                    .unwrap()
                    .is_none(),
                "a live claim is not taken twice"
            );
            // a's attempt ends late: nothing recorded, nothing counted.
            assert!(!store.delivery_sent(&by_a).unwrap());
            assert!(!store.delivery_retry(&by_a, Millis(1)).unwrap());
            assert_eq!(store.get_rule("ntf-1").unwrap().delivered, 0);
            assert_eq!(store.pending_deliveries().unwrap().len(), 1);
            // b's is.
            assert!(store.delivery_sent(&by_b).unwrap());
            assert!(!store.delivery_sent(&by_b).unwrap(), "recorded once");
            assert_eq!(store.get_rule("ntf-1").unwrap().delivered, 1);
            assert!(store.pending_deliveries().unwrap().is_empty());
        }
    }

    #[test]
    fn a_failed_attempt_releases_its_claim_and_alone_a_crash_s_claim_does_not_delay() {
        for (_engine, store) in testing::stores() {
            store.add_rule(&rule()).unwrap();
            store.queue_delivery(&delivery(3)).unwrap();
            let id = "dlv-3-ntf-1";
            let mut first = store.claim_delivery(id, None, 30_000).unwrap().unwrap();
            // Alone, a claim left by a crash does not hold the next attempt.
            let second = store.claim_delivery(id, None, 30_000).unwrap().unwrap();
            assert!(!store.delivery_sent(&first).unwrap(), "superseded");
            first = second;
            first.attempts = 1;
            first.last_error = Some("refused".into());
            assert!(store.delivery_retry(&first, Millis(5)).unwrap());
            let stored = store.pending_deliveries().unwrap().remove(0);
            assert_eq!((stored.attempts, stored.claim), (1, None));
            assert_eq!(
                store.get_rule("ntf-1").unwrap().last_error,
                Some((Millis(5), "refused".into()))
            );
        }
    }
}
