//! Property tests against a simple model: the status rollup under random
//! claims, outcomes, lost leases, deliveries and requeues; and the batching
//! rule under random queue sizes and batch sizes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{test_config, TestDb};
use dbrouter::gateways::Outcome;
use dbrouter::outbound;
use proptest::prelude::*;
use serde_json::json;
use tokio::time::Instant;

const MAX_ATTEMPTS: i32 = 3;

/// The model of one transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    Q,
    P { token: i64 },
    S,
    D,
    ERetry,
    EFinal,
}

impl T {
    fn letter(self) -> &'static str {
        match self {
            T::Q => "Q",
            T::P { .. } => "P",
            T::S => "S",
            T::D => "D",
            T::ERetry | T::EFinal => "E",
        }
    }
    /// Claimable: queued, awaiting a retry (backoff 0), or leased (lease 0).
    fn due(self) -> bool {
        matches!(self, T::Q | T::ERetry | T::P { .. })
    }
}

/// RapidSMS's rule, straight from the seed, over the model's transmissions.
fn rapidsms_status(ts: &[T]) -> &'static str {
    let letters: Vec<&str> = ts.iter().map(|t| t.letter()).collect();
    if letters.contains(&"E") {
        "E"
    } else if letters.iter().any(|l| *l != "S" && *l != "D") {
        "P"
    } else if letters.iter().any(|l| *l != "D") {
        "S"
    } else {
        "D"
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Claim up to n (lease 0: immediately re-claimable, as after a crash).
    Claim(u32),
    /// Finish the k-th claim so far with these outcomes (0 sent, 1 retry, 2 permanent).
    Finish(usize, Vec<u8>),
    /// Deliver the transmissions at these indexes (only S ones change).
    Deliver(Vec<usize>),
    /// dbrouter.requeue_message.
    Requeue,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..5).prop_map(Op::Claim),
        4 => (0usize..8, prop::collection::vec(0u8..4, 5)).prop_map(|(k, o)| Op::Finish(k, o)),
        1 => prop::collection::vec(0usize..5, 0..3).prop_map(Op::Deliver),
        1 => Just(Op::Requeue),
    ]
}

static BACKENDS: AtomicU32 = AtomicU32::new(0);

async fn run_rollup_case(db: &TestDb, n: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let name = format!("r{}", BACKENDS.fetch_add(1, Ordering::Relaxed));
    let backend = db.backend(&name, "database", json!({}), None).await;
    let identities: Vec<String> = (0..n).map(|i| format!("+{i}")).collect();
    let msg = db.broadcast(&name, &identities, "hi").await;
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM dbrouter.transmissions WHERE message_id = $1 ORDER BY id")
            .bind(msg)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let ids: Vec<i64> = rows.into_iter().map(|(i,)| i).collect();
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut model = vec![T::Q; n];
    let mut attempts = vec![0i32; n];
    let mut claims: Vec<(i64, Vec<i64>)> = Vec::new();
    let mut cfg = test_config();
    cfg.max_attempts = MAX_ATTEMPTS as u32;
    let give_up = Instant::now() + Duration::from_secs(30);

    for op in ops {
        match op {
            Op::Claim(limit) => {
                let token = claims.len() as i64 + 1;
                let claimed = outbound::claim(&db.pool, backend, limit, token, Duration::ZERO)
                    .await
                    .unwrap();
                let due = model.iter().filter(|t| t.due()).count();
                prop_assert_eq!(
                    claimed.len(),
                    due.min(limit as usize),
                    "claims take min(limit, due)"
                );
                let mut got = Vec::new();
                for c in &claimed {
                    let i = index[&c.transmission_id];
                    prop_assert!(
                        model[i].due(),
                        "claimed a row that was not due: {:?}",
                        model[i]
                    );
                    model[i] = T::P { token };
                    attempts[i] += 1;
                    prop_assert_eq!(c.attempts, attempts[i]);
                    got.push(c.transmission_id);
                }
                claims.push((token, got));
            }
            Op::Finish(k, outcomes) => {
                let Some((token, claimed)) = claims.get(k % claims.len().max(1)).cloned() else {
                    continue;
                };
                let list: Vec<(i64, Outcome)> = claimed
                    .iter()
                    .zip(outcomes.iter().cycle())
                    .map(|(id, o)| {
                        let outcome = match o {
                            0 => Outcome::sent(None),
                            1 => Outcome::retryable("busy"),
                            2 => Outcome::throttled("slow down", std::time::Duration::ZERO),
                            _ => Outcome::permanent("barred"),
                        };
                        (*id, outcome)
                    })
                    .collect();
                let recorded = outbound::finish(&db.pool, &cfg, token, &list, None, give_up)
                    .await
                    .unwrap();
                let mut expected = 0;
                for (id, outcome) in &list {
                    let i = index[id];
                    if model[i] != (T::P { token }) {
                        continue; // fenced: the lease moved on
                    }
                    expected += 1;
                    model[i] = match outcome {
                        Outcome::Sent { .. } => T::S,
                        Outcome::Failed {
                            permanent: true, ..
                        } => T::EFinal,
                        Outcome::Failed { .. } if attempts[i] >= MAX_ATTEMPTS => T::EFinal,
                        Outcome::Failed { .. } => T::ERetry,
                        // the gateway never looked at it: queued again,
                        // no attempt used
                        Outcome::Throttled { .. } | Outcome::Unauthorized { .. } => {
                            attempts[i] -= 1;
                            T::Q
                        }
                    };
                }
                prop_assert_eq!(
                    recorded,
                    expected,
                    "fenced finish records only rows still held"
                );
            }
            Op::Deliver(which) => {
                let chosen: Vec<i64> = which.iter().filter(|i| **i < n).map(|i| ids[*i]).collect();
                sqlx::query("SELECT dbrouter.mark_delivered($1)")
                    .bind(&chosen)
                    .execute(&db.pool)
                    .await
                    .unwrap();
                for id in chosen {
                    let i = index[&id];
                    if model[i] == T::S {
                        model[i] = T::D;
                    }
                }
            }
            Op::Requeue => {
                sqlx::query("SELECT dbrouter.requeue_message($1)")
                    .bind(msg)
                    .execute(&db.pool)
                    .await
                    .unwrap();
                for i in 0..n {
                    if matches!(model[i], T::ERetry | T::EFinal) {
                        model[i] = T::Q;
                        attempts[i] = 0;
                    }
                }
            }
        }
        // The database agrees with the model, row by row and rolled up.
        let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT id, status::text, due_at::text FROM dbrouter.transmissions WHERE message_id = $1 ORDER BY id",
        )
        .bind(msg)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        for (id, status, due) in rows {
            let t = model[index[&id]];
            prop_assert_eq!(status.as_str(), t.letter(), "transmission {}", id);
            prop_assert_eq!(
                due.is_none(),
                matches!(t, T::S | T::D | T::EFinal),
                "due_at of {}",
                id
            );
        }
        let status = db
            .scalar_str(&format!(
                "SELECT status::text FROM dbrouter.messages WHERE id = {msg}"
            ))
            .await;
        let any_claimed = claims.iter().any(|(_, c)| !c.is_empty());
        let expected = if any_claimed {
            rapidsms_status(&model)
        } else {
            "Q"
        };
        prop_assert_eq!(
            status.as_str(),
            expected,
            "message status vs model {:?}",
            model
        );
    }
    Ok(())
}

#[test]
fn status_rollup_matches_the_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(n in 1usize..6, ops in prop::collection::vec(op(), 1..25))| {
        rt.block_on(run_rollup_case(&db, n, ops))?;
    });
    rt.block_on(db.assert_invariants());
    rt.block_on(db.drop());
}

#[test]
fn batches_are_chunks_of_the_batch_size_per_backend() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(queues in prop::collection::vec((0usize..40, 1i32..12), 1..4), default in 1u32..15)| {
        rt.block_on(async {
            let mut names = Vec::new();
            for (count, batch) in &queues {
                let name = format!("b{}", BACKENDS.fetch_add(1, Ordering::Relaxed));
                // Half the backends use the worker's default batch size.
                let own = (*batch % 2 == 0).then_some(*batch);
                db.backend(&name, "database", json!({}), own).await;
                let ids: Vec<String> = (0..*count).map(|i| format!("+{i}")).collect();
                if !ids.is_empty() {
                    db.broadcast(&name, &ids, "x").await;
                }
                names.push((name, *count, own.map(|b| b as usize).unwrap_or(default as usize)));
            }
            let mut cfg = test_config();
            cfg.batch_size = default;
            db.worker(cfg).await.drain().await.unwrap();
            for (name, count, size) in names {
                let rows: Vec<(i64,)> = sqlx::query_as(
                    "SELECT count(*) FROM dbrouter.database_backend_sends WHERE backend = $1 GROUP BY batch ORDER BY min(id)",
                )
                .bind(&name)
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let got: Vec<usize> = rows.into_iter().map(|(n,)| n as usize).collect();
                let mut want = vec![size; count / size];
                if count % size > 0 {
                    want.push(count % size);
                }
                prop_assert_eq!(got, want, "backend {} with {} transmissions", name, count);
            }
            Ok(())
        })?;
    });
    rt.block_on(db.drop());
}
