//! DR plans: a policy declared once ("every night at 03:00 Berlin time, copy the newest snapshot
//! of every production cluster to us-west-2, keep the last 7"), validated like a copy request.
//! This module holds the plan as declared and validated (`spec`), when it runs (`schedule`),
//! and what a run decides: sources, target ids and expiries (`decide`).

#![allow(dead_code)] // Wired into the API, store and scheduler by the rest of issue #29.

pub(crate) mod decide;
pub(crate) mod schedule;
pub(crate) mod spec;
