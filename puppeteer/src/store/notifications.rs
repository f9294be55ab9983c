//! Notification rules and the deliveries owed.
//!
//! The notifier reads the event stream from a cursor kept in `meta`
//! (`notify_cursor`). The deliveries an event calls for are stored in the
//! same transaction that moves the cursor past it, so across a crash no
//! event is matched twice or skipped. A delivery stays in `deliveries` until
//! it was sent (then it is removed and counted on its rule) or given up.

use crate::store::Transactional;

use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{Delivery, Millis, NotificationRule};

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

    /// Stores deliveries and moves the cursor, all or nothing.
    pub fn queue_deliveries(&self, cursor: u64, deliveries: &[Delivery]) -> Result<()> {
        (&self.meta, &self.deliveries).transaction(|(meta, tree)| {
            for d in deliveries {
                tree.insert(d.id.as_bytes(), encode(d))?;
            }
            meta.insert(CURSOR, &cursor.to_be_bytes())?;
            Ok(())
        })?;
        Ok(())
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

    /// A delivery went out: it is forgotten and counted on its rule.
    pub fn delivery_sent(&self, delivery: &Delivery) -> Result<()> {
        self.delivery_done(delivery, None)
    }

    /// A delivery was given up: forgotten, counted and explained on its rule.
    pub fn delivery_failed(&self, delivery: &Delivery, error: &str, now: Millis) -> Result<()> {
        self.delivery_done(delivery, Some((now, error.to_string())))
    }

    fn delivery_done(&self, delivery: &Delivery, failure: Option<(Millis, String)>) -> Result<()> {
        (&self.rules, &self.deliveries).transaction(|(rules, tree)| {
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
            Ok(())
        })?;
        Ok(())
    }

    /// An attempt failed; the delivery is tried again later.
    pub fn delivery_retry(&self, delivery: &Delivery, now: Millis) -> Result<()> {
        (&self.rules, &self.deliveries).transaction(|(rules, tree)| {
            tree.insert(delivery.id.as_bytes(), encode(delivery))?;
            if let Some(v) = rules.get(delivery.rule_id.as_bytes())? {
                let mut rule: NotificationRule = match decode(delivery.rule_id.as_bytes(), &v) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                rule.last_error = delivery.last_error.clone().map(|e| (now, e));
                rules.insert(delivery.rule_id.as_bytes(), encode(&rule))?;
            }
            Ok(())
        })?;
        Ok(())
    }
}
