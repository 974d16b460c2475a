//! Following other nodes' writes: the change feed of a shared store, applied to what this
//! node keeps in memory (resolutions, aliases, keys, pauses, the catalog triggers follow).
//!
//! A node's own writes update its memory as they are made; the feed brings every node's,
//! its own included (applying one twice changes nothing). Wake-ups come from the store's
//! notifications; a read every `CHANGES_POLL` as well bounds the delay when one is lost.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use store::{Change, ChangeFeed, ChangesAfter};

use crate::{Error, Platform, now_ms};

/// How often the feed is read without a wake-up: the bound on how late a write whose
/// notification was lost is seen.
const CHANGES_POLL: Duration = Duration::from_secs(1);

/// Changes read at once.
const CHANGES_PER_READ: usize = 1_000;

/// How long changes are kept: a node cut off for longer loads everything again.
const CHANGES_KEPT_MS: i64 = 3_600_000;

/// How often each node purges changes older than `CHANGES_KEPT_MS` (any node may; purging
/// twice is harmless).
const CHANGES_PURGE_EVERY: Duration = Duration::from_secs(600);

/// What a batch of changes asks this node to refresh.
#[derive(Default)]
struct Refresh {
    /// Functions whose record changed (deploy, delete, a new version number).
    functions: BTreeSet<String>,
    /// Functions whose versions changed.
    versions: BTreeSet<String>,
    /// Functions whose aliases changed.
    aliases: BTreeSet<String>,
    catalog: bool,
    keys: bool,
    aws_keys: bool,
    pauses: bool,
}

impl Refresh {
    fn of(changes: &[Change]) -> Refresh {
        let mut r = Refresh::default();
        for c in changes {
            match c.kind.as_str() {
                "function" => {
                    r.functions.insert(c.name.clone());
                    r.catalog = true;
                }
                "version" => {
                    r.versions.insert(c.name.clone());
                }
                "alias" => {
                    r.aliases.insert(c.name.clone());
                }
                "key" => r.keys = true,
                "aws_key" => r.aws_keys = true,
                "pause" => r.pauses = true,
                // A flow's triggers are in the catalog; a kind this version does not know
                // (a newer node's) refreshes the catalog too rather than being ignored.
                _ => r.catalog = true,
            }
        }
        r
    }

    /// Everything: after a gap in the feed.
    fn all(platform: &Platform) -> Refresh {
        let names: BTreeSet<String> = platform
            .catalog()
            .functions
            .iter()
            .map(|f| f.spec.name.clone())
            .chain(platform.aliases.read().unwrap().keys().cloned())
            .collect();
        Refresh {
            versions: names.clone(),
            aliases: names.clone(),
            functions: names,
            catalog: true,
            keys: true,
            aws_keys: true,
            pauses: true,
        }
    }
}

impl Platform {
    /// Follows `feed` from its newest change on, until the platform is dropped. Call it
    /// before `load`, so that nothing committed between the two is missed.
    pub async fn follow_changes(self: &Arc<Self>, feed: Arc<dyn ChangeFeed>) -> Result<(), Error> {
        let seen = feed.latest_change().await?;
        tokio::spawn(follow(Arc::downgrade(self), feed.clone(), seen));
        tokio::spawn(purge(Arc::downgrade(self), feed));
        Ok(())
    }

    async fn apply(&self, r: Refresh) -> Result<(), Error> {
        if !r.versions.is_empty() {
            // Versions never change, but a deleted one must stop resolving; resolutions of
            // `$LATEST` stay (its instances with them).
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.functions.write().unwrap().retain(|k, _| {
                !k.split_once(':')
                    .is_some_and(|(name, _)| r.versions.contains(name))
            });
        }
        if !r.aliases.is_empty() {
            let mut aliases = self.aliases.write().unwrap();
            for name in &r.aliases {
                aliases.remove(name);
            }
        }
        if r.catalog {
            self.publish_catalog().await?;
            let after = self.catalog();
            for name in &r.functions {
                let stored = after
                    .functions
                    .iter()
                    .find(|f| &f.spec.name == name)
                    .map(|f| (f.revision, f.spec.min_instances));
                // Compared with what this node resolved, not with the catalog it published
                // before: any republication (a local write of another function) may already
                // list the new revision.
                let cached = self
                    .functions
                    .read()
                    .unwrap()
                    .get(name.as_str())
                    .map(|r| r.function.revision);
                match (stored, cached) {
                    (None, _) => self.forget(name, true),
                    // A new version number changes the record, not what `$LATEST` runs:
                    // only a new revision replaces this node's instances.
                    (Some((revision, _)), Some(c)) if c == revision => {}
                    (Some((_, min_instances)), _) => {
                        self.forget(name, false);
                        if min_instances > 0 {
                            self.provision(name).await?;
                        }
                    }
                }
            }
        }
        if r.keys {
            let keys = self.meta.list_keys().await?;
            *self.keys.write().unwrap() = keys.into_iter().map(|k| k.sha256).collect();
        }
        if r.aws_keys {
            self.load_aws_keys().await?;
        }
        if r.pauses {
            let epoch = self.paused_epoch();
            let paused = self
                .meta
                .timer_states(None)
                .await?
                .into_iter()
                .filter(|s| s.paused)
                .map(|s| (s.function, s.timer))
                .collect();
            self.refresh_paused(paused, epoch);
        }
        Ok(())
    }
}

/// Reads and applies the feed after each wake-up or `CHANGES_POLL`.
async fn follow(platform: Weak<Platform>, feed: Arc<dyn ChangeFeed>, mut seen: i64) {
    loop {
        let _ = tokio::time::timeout(CHANGES_POLL, feed.changed()).await;
        loop {
            let Some(p) = platform.upgrade() else { return };
            let (refresh, next, more) = match feed.changes_after(seen, CHANGES_PER_READ).await {
                Ok(ChangesAfter::Changes(changes)) if changes.is_empty() => break,
                Ok(ChangesAfter::Changes(changes)) => (
                    Refresh::of(&changes),
                    changes.last().map_or(seen, |c| c.seq),
                    changes.len() == CHANGES_PER_READ,
                ),
                Ok(ChangesAfter::Gap { latest }) => {
                    tracing::warn!(
                        seen,
                        latest,
                        "this node missed changes the store no longer keeps; reloading everything"
                    );
                    (Refresh::all(&p), latest, false)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the change feed failed");
                    break;
                }
            };
            match p.apply(refresh).await {
                Ok(()) => seen = next,
                Err(e) => {
                    // `seen` stays: the same changes are applied again next time.
                    tracing::warn!(error = %e, "applying other nodes' changes failed");
                    break;
                }
            }
            if !more {
                break;
            }
        }
    }
}

/// Purges old changes now and then.
async fn purge(platform: Weak<Platform>, feed: Arc<dyn ChangeFeed>) {
    loop {
        tokio::time::sleep(CHANGES_PURGE_EVERY).await;
        if platform.upgrade().is_none() {
            return;
        }
        if let Err(e) = feed.purge_changes(now_ms() - CHANGES_KEPT_MS).await {
            tracing::warn!(error = %e, "purging old changes failed");
        }
    }
}
