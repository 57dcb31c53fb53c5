//! The built-in password file (see [`crate::server::auth`], where it lives; re-exported here),
//! as an async [`Authenticator`]: hashing runs on tokio's blocking pool, not on the runtime's
//! workers.

use mqttproto_core::ReasonCode;

pub use crate::server::auth::*;

use super::broker::{AuthFuture, Authenticator, ConnectRequest};

impl Authenticator for PasswordFile {
    fn authenticate(&self, request: ConnectRequest) -> AuthFuture<'_> {
        let this = self.clone();
        Box::pin(async move {
            let verdict = tokio::task::spawn_blocking(move || {
                this.check(request.username(), request.password())
            })
            .await;
            verdict.unwrap_or(ReasonCode::ImplementationSpecificError)
        })
    }
}
