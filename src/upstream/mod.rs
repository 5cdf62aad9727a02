//! The backend side of the data path: connections to backends and the HTTP/1.1 client that
//! speaks on them.
//!
//! HTTP/1.1 connections are [`h1::Connection`]s, driven by the request that uses them; HTTP/2
//! ones are hyper's, with a driver task. We keep our own per-backend pool instead of
//! hyper-util's legacy `Client` because the proxy needs three things that client cannot give: a
//! request handed back intact when a connect fails (so it can go to a *different* backend), idle
//! connections owned by the backend (so a removed backend's connections close with it and a kept
//! backend's survive a reload), and no per-request URI-keyed lookup under one client-wide lock
//! (each backend's idle stack has its own).
//!
//! [`connect`] opens connections, [`conn`] is one connection of either protocol,
//! [`idle_pool`] keeps them between requests, [`h1`] speaks HTTP/1.1, [`request_body`] is what
//! goes up.

pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod h1;
pub(crate) mod idle_pool;
pub(crate) mod request_body;

pub(crate) use conn::{Conn, ResponseBody};
pub(crate) use connect::{ConnectError, Connector, connect};
pub(crate) use idle_pool::IdleConnections;
pub(crate) use request_body::{BoxedRequest, RequestBody};
