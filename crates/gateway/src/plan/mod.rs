//! DR plans: a policy declared once ("every night at 03:00 Berlin time, copy the newest snapshot
//! of every production cluster to us-west-2, keep the last 7"), validated like a copy request.
//! This module holds the plan as declared and validated (`spec`) and when it runs (`schedule`).

#![allow(dead_code)] // Wired into the API, store and scheduler by the rest of issue #29.

pub(crate) mod schedule;
pub(crate) mod spec;
