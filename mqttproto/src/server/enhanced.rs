//! Enhanced authentication (MQTT 5 section 4.12) for both brokers: the
//! [`EnhancedAuthenticator`] trait, which names the Authentication Methods it supports and
//! starts one [`AuthConversation`] per exchange, and the [`AuthStep`] each step of a
//! conversation ends with.
//!
//! # The exchange
//!
//! A client that sets an Authentication Method in CONNECT asks for enhanced authentication:
//!
//! 1. If no enhanced authenticator is configured, or it does not
//!    [support](EnhancedAuthenticator::supports) the method, the client is refused with CONNACK
//!    0x8C Bad authentication method and the connection closes [MQTT-4.12.0-1].
//! 2. Otherwise the broker [starts](EnhancedAuthenticator::start) a conversation for the
//!    connection and [steps](AuthConversation::step) it with the CONNECT's Authentication Data.
//! 3. [`AuthStep::Continue`] sends AUTH 0x18 Continue authentication with the given data (a
//!    challenge) [MQTT-4.12.0-2]; the client's AUTH 0x18 answer steps the conversation again
//!    [MQTT-4.12.0-3].
//! 4. [`AuthStep::Success`] accepts the client: CONNACK 0x00 carries the method and the final
//!    data [MQTT-4.12.0-5]. [`AuthStep::Failure`] refuses it: CONNACK carries the code and the
//!    connection closes [MQTT-4.12.0-4].
//!
//! The connect timeout (`BrokerConfig::with_connect_timeout`) bounds the whole exchange: a
//! client that has not been accepted by then is disconnected.
//!
//! # Re-authentication
//!
//! A connected client that authenticated this way may re-authenticate at any time with AUTH
//! 0x19 [MQTT-4.12.1-1]. The broker starts a **new** conversation (with
//! [`AuthContext::reauthentication`] set) and steps it with that AUTH's data; challenges go out
//! as before, [`AuthStep::Success`] ends it with AUTH 0x00 Success (and the final data), and
//! [`AuthStep::Failure`] ends the connection with DISCONNECT carrying the code (0x87 Not
//! authorized when DISCONNECT cannot carry it) [MQTT-4.12.1-2]. The client stays connected, and
//! keeps publishing and receiving, while a re-authentication runs.
//!
//! # Relation to the other checks
//!
//! For a connection that uses enhanced authentication, the conversation **replaces** the
//! broker's regular authenticator (User Name and Password): the method is the credential, and
//! the regular authenticator is not consulted. The [`Authorizer`](super::Authorizer) still
//! decides what the client may publish and subscribe to; it sees the CONNECT's client id and
//! User Name. A CONNECT without an Authentication Method goes to the regular authenticator as
//! before, whether or not an enhanced authenticator is configured.
//!
//! # Threads
//!
//! `start` and `step` run off the broker's owner (the async broker on tokio's blocking pool,
//! the blocking broker on a short-lived thread per step), so a slow step (a database, a remote
//! service, a deliberately slow hash) delays only its own client. They may block. A step that
//! panics refuses the client (CONNACK 0x83) or, during a re-authentication, disconnects it
//! (0x83). At most one step of a connection runs at a time; a client that sends AUTH while
//! its previous one is still being answered breaks the protocol and is disconnected (0x82).
//! When a client disconnects mid-exchange its conversation is dropped (once a step that may
//! be running returns).
//!
//! # Example
//!
//! A challenge-response method `EXAMPLE-CHALLENGE`: the broker sends a nonce, the client must
//! answer with the nonce reversed.
//!
//! ```
//! use bytes::Bytes;
//! use mqttproto::proto::ReasonCode;
//! use mqttproto::server::{AuthContext, AuthConversation, AuthStep, EnhancedAuthenticator};
//!
//! struct Challenge;
//!
//! impl EnhancedAuthenticator for Challenge {
//!     fn supports(&self, method: &str) -> bool {
//!         method == "EXAMPLE-CHALLENGE"
//!     }
//!
//!     fn start(&self, _context: &AuthContext<'_>) -> Result<Box<dyn AuthConversation>, ReasonCode> {
//!         Ok(Box::new(Conversation { nonce: None }))
//!     }
//! }
//!
//! struct Conversation {
//!     nonce: Option<Vec<u8>>,
//! }
//!
//! impl AuthConversation for Conversation {
//!     fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
//!         match self.nonce.take() {
//!             // The CONNECT (or AUTH 0x19): send a challenge.
//!             None => {
//!                 let nonce = b"n0nce".to_vec();
//!                 self.nonce = Some(nonce.clone());
//!                 AuthStep::Continue(Some(Bytes::from(nonce)))
//!             }
//!             // The answer.
//!             Some(mut nonce) => {
//!                 nonce.reverse();
//!                 if data == Some(&nonce[..]) {
//!                     AuthStep::Success(Some(Bytes::from_static(b"welcome")))
//!                 } else {
//!                     AuthStep::Failure(ReasonCode::NotAuthorized)
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! // Either broker: `tokio::broker::BrokerConfig` or `blocking::broker::BrokerConfig`.
//! let config = mqttproto::blocking::broker::BrokerConfig::default()
//!     .with_enhanced_authenticator(Challenge);
//! # let _ = config;
//! ```

use bytes::Bytes;
use mqttproto_core::ReasonCode;

use super::ConnectRequest;

/// What one [step](AuthConversation::step) of an enhanced authentication decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Not done yet: send AUTH 0x18 Continue authentication with this Authentication Data (a
    /// challenge) and step again with the client's answer [MQTT-4.12.0-2].
    Continue(Option<Bytes>),
    /// Authenticated: CONNACK 0x00 (or, for a re-authentication, AUTH 0x00 Success) with this
    /// final Authentication Data, if any.
    Success(Option<Bytes>),
    /// Refused with this reason code (0x80 or above, for example 0x87 Not authorized or 0x8C
    /// Bad authentication method): in CONNACK, after which the connection closes
    /// [MQTT-4.12.0-4]; for a re-authentication in DISCONNECT [MQTT-4.12.1-2]. A code the
    /// packet cannot carry (or one below 0x80) is replaced by 0x87 Not authorized.
    Failure(ReasonCode),
}

/// What an [`EnhancedAuthenticator`] knows when a conversation starts.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuthContext<'a> {
    /// The client's CONNECT (client id, User Name, Authentication Method and initial data, …),
    /// where it connects from, on which listener, with which TLS certificate.
    pub request: &'a ConnectRequest,
    /// The Authentication Method (the CONNECT's).
    pub method: &'a str,
    /// Whether this is a re-authentication of a connected client (AUTH 0x19), rather than
    /// the authentication of a CONNECT.
    pub reauthentication: bool,
}

impl<'a> AuthContext<'a> {
    /// A context for `request`, whose CONNECT must carry an Authentication Method (`None`
    /// otherwise).
    pub fn new(request: &'a ConnectRequest, reauthentication: bool) -> Option<Self> {
        let method = request.authentication_method()?;
        Some(AuthContext {
            request,
            method,
            reauthentication,
        })
    }
}

/// The broker's side of enhanced authentication (section 4.12), shared by both brokers. See
/// the [module documentation](self) for the exchange and an example.
///
/// One authenticator serves every connection; it keeps per-connection state in the
/// [`AuthConversation`]s it starts.
pub trait EnhancedAuthenticator: Send + Sync + 'static {
    /// Whether the Authentication Method `method` is supported. A CONNECT naming a method
    /// this returns `false` for is refused with 0x8C Bad authentication method
    /// [MQTT-4.12.0-1], without [`start`](Self::start) being called.
    fn supports(&self, method: &str) -> bool;

    /// Starts a conversation for a CONNECT or a re-authentication. The broker then steps it
    /// with the data of the CONNECT (or of the AUTH 0x19). `Err(code)` refuses at once, as
    /// [`AuthStep::Failure`] does.
    fn start(&self, context: &AuthContext<'_>) -> Result<Box<dyn AuthConversation>, ReasonCode>;
}

/// The state of one enhanced authentication exchange on one connection.
///
/// Dropped when the exchange ends (success or failure) or the client goes away; a
/// re-authentication gets a new conversation.
pub trait AuthConversation: Send + 'static {
    /// The client's Authentication Data: first the CONNECT's (or the AUTH 0x19's), then that
    /// of each AUTH 0x18 answering a [`AuthStep::Continue`]. `None` when the packet had none.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

impl ConnectRequest {
    /// The Authentication Method of the CONNECT, if the client asked for enhanced
    /// authentication.
    pub fn authentication_method(&self) -> Option<&str> {
        self.connect
            .properties
            .authentication_method
            .as_ref()
            .map(|m| m.as_str())
    }

    /// The Authentication Data of the CONNECT, if any.
    pub fn authentication_data(&self) -> Option<&[u8]> {
        self.connect.properties.authentication_data.as_deref()
    }
}

// ---- the drivers' shared bookkeeping ----------------------------------------------------

#[cfg(any(feature = "tokio", feature = "blocking"))]
pub(crate) use driver::{AuthJob, AuthJobResult, AuthTable, OnConnect};

#[cfg(any(feature = "tokio", feature = "blocking"))]
mod driver {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use mqttproto_core::broker::{Broker as CoreBroker, ConnectionHandle};
    use mqttproto_core::codec::Auth;
    use mqttproto_core::session::SessionPhase;
    use mqttproto_core::{PacketType, ReasonCode};

    use super::{AuthContext, AuthConversation, AuthStep, EnhancedAuthenticator};
    use crate::server::ConnectRequest;

    const TARGET: &str = "mqttproto::broker";

    /// Where one connection that uses enhanced authentication is.
    enum Phase {
        /// A step runs off the owner; its conversation is with it.
        Busy,
        /// A challenge is out; the conversation waits for the client's AUTH 0x18.
        Waiting(Box<dyn AuthConversation>),
        /// Connected; no exchange under way (a re-authentication may start).
        Idle,
    }

    struct Entry {
        authenticator: Arc<dyn EnhancedAuthenticator>,
        request: Arc<ConnectRequest>,
        connected: bool,
        phase: Phase,
    }

    /// The enhanced-authentication state of every connection that uses it. Lives on the
    /// owner, next to the core broker; the steps run elsewhere as [`AuthJob`]s.
    pub(crate) struct AuthTable {
        authenticator: Option<Arc<dyn EnhancedAuthenticator>>,
        entries: HashMap<ConnectionHandle, Entry>,
    }

    enum Work {
        Start(Arc<dyn EnhancedAuthenticator>, Arc<ConnectRequest>, bool),
        Step(Box<dyn AuthConversation>),
    }

    /// One step of a conversation, to run off the owner with [`AuthJob::run`].
    pub(crate) struct AuthJob {
        handle: ConnectionHandle,
        work: Work,
        data: Option<Bytes>,
    }

    /// What an [`AuthJob`] decided, for [`AuthTable::finish`] on the owner.
    pub(crate) struct AuthJobResult {
        handle: ConnectionHandle,
        conversation: Option<Box<dyn AuthConversation>>,
        step: AuthStep,
    }

    impl AuthJob {
        /// The connection.
        pub(crate) fn handle(&self) -> ConnectionHandle {
            self.handle
        }

        /// Starts (if needed) and steps the conversation. May block. A panic in the
        /// application's code becomes a failure with 0x83 Implementation specific error.
        pub(crate) fn run(self) -> AuthJobResult {
            let AuthJob { handle, work, data } = self;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let mut conversation = match work {
                    Work::Step(c) => c,
                    Work::Start(authenticator, request, reauthentication) => {
                        let Some(context) = AuthContext::new(&request, reauthentication) else {
                            return (None, AuthStep::Failure(ReasonCode::ProtocolError));
                        };
                        match authenticator.start(&context) {
                            Ok(c) => c,
                            Err(code) => return (None, AuthStep::Failure(code)),
                        }
                    }
                };
                let step = conversation.step(data.as_deref());
                (Some(conversation), step)
            }));
            let (conversation, step) = outcome.unwrap_or_else(|_| {
                tracing::error!(target: TARGET, conn = handle.index(), "enhanced authenticator panicked");
                (
                    None,
                    AuthStep::Failure(ReasonCode::ImplementationSpecificError),
                )
            });
            AuthJobResult {
                handle,
                conversation,
                step,
            }
        }
    }

    impl AuthJobResult {
        /// The result of a job that could not run (no thread for it, or the runtime stopped):
        /// a failure with 0x83 Implementation specific error.
        pub(crate) fn failed(handle: ConnectionHandle) -> AuthJobResult {
            AuthJobResult {
                handle,
                conversation: None,
                step: AuthStep::Failure(ReasonCode::ImplementationSpecificError),
            }
        }
    }

    /// What the driver does after the table handled a CONNECT.
    pub(crate) enum OnConnect {
        /// Not enhanced authentication: the regular authenticator decides.
        Regular(ConnectRequest),
        /// Refused at once (the core has answered).
        Done,
        /// Run this job off the owner, then hand its result to [`AuthTable::finish`].
        Run(AuthJob),
    }

    impl AuthTable {
        pub(crate) fn new(authenticator: Option<Arc<dyn EnhancedAuthenticator>>) -> AuthTable {
            AuthTable {
                authenticator,
                entries: HashMap::new(),
            }
        }

        /// A CONNECT: with an Authentication Method, refuses an unsupported method with 0x8C
        /// [MQTT-4.12.0-1] or starts a conversation.
        pub(crate) fn on_connect(
            &mut self,
            core: &mut CoreBroker,
            now: Instant,
            handle: ConnectionHandle,
            request: ConnectRequest,
        ) -> OnConnect {
            let Some(method) = request.authentication_method() else {
                return OnConnect::Regular(request);
            };
            let supported = self.authenticator.as_ref().filter(|a| a.supports(method));
            let Some(authenticator) = supported.cloned() else {
                tracing::info!(
                    target: TARGET, conn = handle.index(), client_id = request.client_id(),
                    method, "connection refused: authentication method not supported"
                );
                let _ = core.acknowledge_connect(now, handle, ReasonCode::BadAuthenticationMethod);
                return OnConnect::Done;
            };
            let data = request.connect.properties.authentication_data.clone();
            let request = Arc::new(request);
            self.entries.insert(
                handle,
                Entry {
                    authenticator: authenticator.clone(),
                    request: request.clone(),
                    connected: false,
                    phase: Phase::Busy,
                },
            );
            OnConnect::Run(AuthJob {
                handle,
                work: Work::Start(authenticator, request, false),
                data,
            })
        }

        /// A client's AUTH (the core checked its method and reason code): the answer to a
        /// challenge, or the start of a re-authentication. Returns the step to run, if any;
        /// a protocol violation ends the connection here.
        pub(crate) fn on_auth(
            &mut self,
            core: &mut CoreBroker,
            now: Instant,
            handle: ConnectionHandle,
            auth: Auth,
        ) -> Option<AuthJob> {
            let data = auth.properties.authentication_data;
            let reauth = auth.reason_code == ReasonCode::ReAuthenticate;
            let Some(entry) = self.entries.get_mut(&handle) else {
                // No conversation for a connection the core let AUTH through for: it cannot
                // happen without a method, so this is a connection whose exchange was decided.
                protocol_error(core, now, handle);
                return None;
            };
            let phase = std::mem::replace(&mut entry.phase, Phase::Busy);
            let work = match (phase, reauth) {
                // The answer to our challenge [MQTT-4.12.0-3].
                (Phase::Waiting(c), false) => Work::Step(c),
                // A re-authentication of a connected client [MQTT-4.12.1-1].
                (Phase::Idle, true) if entry.connected => {
                    Work::Start(entry.authenticator.clone(), entry.request.clone(), true)
                }
                // AUTH while a step is being decided, 0x18 without a challenge, or 0x19 in
                // the middle of an exchange.
                (phase, _) => {
                    tracing::info!(
                        target: TARGET, conn = handle.index(), reason = %auth.reason_code,
                        "unexpected AUTH during enhanced authentication"
                    );
                    entry.phase = phase;
                    protocol_error(core, now, handle);
                    return None;
                }
            };
            Some(AuthJob { handle, work, data })
        }

        /// Applies a step's decision: a challenge, CONNACK (success with the method and final
        /// data, or failure), AUTH 0x00 Success, or DISCONNECT. Returns the connection and its
        /// CONNACK code when the exchange of a CONNECT ended (for the driver's logs).
        pub(crate) fn finish(
            &mut self,
            core: &mut CoreBroker,
            now: Instant,
            result: AuthJobResult,
        ) -> Option<(ConnectionHandle, ReasonCode)> {
            let AuthJobResult {
                handle,
                conversation,
                step,
            } = result;
            let Some(entry) = self.entries.get_mut(&handle) else {
                // The client went away meanwhile: its conversation is dropped here.
                return None;
            };
            let connected = entry.connected;
            let step = match (step, conversation) {
                (AuthStep::Continue(data), Some(c)) => {
                    entry.phase = Phase::Waiting(c);
                    match core.send_auth(now, handle, ReasonCode::ContinueAuthentication, data) {
                        Ok(()) => return None,
                        // For example a challenge beyond the client's Maximum Packet Size.
                        Err(error) => {
                            tracing::warn!(
                                target: TARGET, conn = handle.index(), %error,
                                "cannot send an authentication challenge"
                            );
                            AuthStep::Failure(ReasonCode::ImplementationSpecificError)
                        }
                    }
                }
                // A challenge always comes with its conversation (see `AuthJob::run`).
                (AuthStep::Continue(_), None) => {
                    AuthStep::Failure(ReasonCode::ImplementationSpecificError)
                }
                (step, _) => step,
            };
            match step {
                AuthStep::Continue(_) => None,
                AuthStep::Success(data) if !connected => {
                    entry.phase = Phase::Idle;
                    entry.connected = true;
                    match core.acknowledge_connect_with_auth_data(
                        now,
                        handle,
                        ReasonCode::Success,
                        data,
                    ) {
                        // The core may still refuse (a Will QoS or Retain the broker does
                        // not support): the connection then closes, which the driver logs.
                        Ok(()) => core
                            .session(handle)
                            .is_some_and(|s| s.phase() == SessionPhase::Connected)
                            .then_some((handle, ReasonCode::Success)),
                        Err(_) => {
                            self.entries.remove(&handle);
                            None
                        }
                    }
                }
                AuthStep::Success(data) => {
                    entry.phase = Phase::Idle;
                    tracing::debug!(target: TARGET, conn = handle.index(), "re-authenticated");
                    if let Err(error) = core.send_auth(now, handle, ReasonCode::Success, data) {
                        tracing::warn!(
                            target: TARGET, conn = handle.index(), %error,
                            "cannot end a re-authentication: disconnecting"
                        );
                        self.entries.remove(&handle);
                        let _ =
                            core.disconnect(now, handle, ReasonCode::ImplementationSpecificError);
                    }
                    None
                }
                AuthStep::Failure(code) if !connected => {
                    self.entries.remove(&handle);
                    let code = failure_code(code, PacketType::ConnAck);
                    let _ = core.acknowledge_connect(now, handle, code);
                    Some((handle, code))
                }
                AuthStep::Failure(code) => {
                    self.entries.remove(&handle);
                    let code = failure_code(code, PacketType::Disconnect);
                    tracing::info!(
                        target: TARGET, conn = handle.index(), reason = %code,
                        "re-authentication failed: disconnecting"
                    );
                    let _ = core.disconnect(now, handle, code);
                    None
                }
            }
        }

        /// The connection closed: its state goes (a step still running is dropped when it
        /// returns).
        pub(crate) fn on_closed(&mut self, handle: ConnectionHandle) {
            self.entries.remove(&handle);
        }
    }

    /// The failure code `packet` carries for a conversation's verdict.
    fn failure_code(code: ReasonCode, packet: PacketType) -> ReasonCode {
        if code.is_error() && code.is_valid_for(packet) {
            code
        } else {
            ReasonCode::NotAuthorized
        }
    }

    /// Ends a connection that broke the exchange's rules with 0x82 Protocol error: in
    /// DISCONNECT once connected, in CONNACK before.
    fn protocol_error(core: &mut CoreBroker, now: Instant, handle: ConnectionHandle) {
        let connected = core
            .session(handle)
            .is_some_and(|s| s.phase() == SessionPhase::Connected);
        if connected {
            let _ = core.disconnect(now, handle, ReasonCode::ProtocolError);
        } else {
            let _ = core.acknowledge_connect(now, handle, ReasonCode::ProtocolError);
        }
    }
}
