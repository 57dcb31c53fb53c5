//! The built-in ACL file, an [`Authorizer`](super::broker::Authorizer) shared by both brokers
//! (see [`crate::server::acl`], where it lives; re-exported here).

pub use crate::server::acl::*;
