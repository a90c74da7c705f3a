pub use replica_check as check;
