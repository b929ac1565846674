//! STUB — being written; replaced by the real source.

use std::time::Duration;

use super::{Delivery, Letter, Outbox, Source, SourceError};
use crate::config::queue::{DeadLetterTarget, RabbitmqSource};

pub struct Rabbitmq {
    cfg: RabbitmqSource,
}

impl Rabbitmq {
    pub fn new(cfg: RabbitmqSource, _consumer: &str) -> Self {
        Rabbitmq { cfg }
    }
}

impl Source for Rabbitmq {
    async fn connect(&mut self) -> Result<(), SourceError> {
        Err(SourceError::new("connecting", self.cfg.url.shown(), "not written yet"))
    }
    async fn claim(&mut self, _max: usize, _wait: Duration) -> Result<Vec<Delivery>, SourceError> {
        Err(SourceError::new("claiming", self.cfg.url.shown(), "not written yet"))
    }
    async fn settle(&mut self, _done: &[Delivery]) -> Result<(), SourceError> {
        Err(SourceError::new("settling", self.cfg.url.shown(), "not written yet"))
    }
}

impl Outbox for Rabbitmq {
    async fn dead_letter(&mut self, _t: &DeadLetterTarget, _l: &Letter) -> Result<(), SourceError> {
        Err(SourceError::new("dead-lettering", self.cfg.url.shown(), "not written yet"))
    }
    async fn replay(&mut self, _id: &str, _p: &[u8]) -> Result<(), SourceError> {
        Err(SourceError::new("replaying", self.cfg.url.shown(), "not written yet"))
    }
}
