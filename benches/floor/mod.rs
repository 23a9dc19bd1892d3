//! Floors: the comparison's workloads with the store taken out, so a run
//! shows what any store could reach on the machine it ran on.

pub mod group_commit;
pub mod memory;
