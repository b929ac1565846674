-- kedge state store. Portable SQL: the same file serves SQLite and PostgreSQL.
-- Times are Unix milliseconds (BIGINT) so one set of queries serves both backends.

CREATE TABLE kedge_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One message, cron fire or manual trigger: the unit that must end as
-- exactly one succeeded run or one dead letter.
CREATE TABLE work_items (
    id            TEXT PRIMARY KEY,
    job           TEXT NOT NULL,
    source        TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    payload       TEXT,
    state         TEXT NOT NULL,
    attempt_base  BIGINT NOT NULL DEFAULT 0,
    deadline_ms   BIGINT,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    UNIQUE (source, job, message_id)
);

-- One attempt at a work item: one Kubernetes Job (or one local process set).
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    work_item_id  TEXT NOT NULL REFERENCES work_items (id),
    job           TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    state         TEXT NOT NULL,
    trigger_kind  TEXT NOT NULL,
    scheduled_ms  BIGINT NOT NULL,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    launches      BIGINT NOT NULL DEFAULT 0,
    error         TEXT,
    UNIQUE (work_item_id, attempt)
);
CREATE INDEX runs_by_state ON runs (state, scheduled_ms);
CREATE INDEX runs_by_job ON runs (job, scheduled_ms);

-- Every cron fire kedge decided about, so a restart neither repeats nor drops one.
CREATE TABLE cron_fires (
    job           TEXT NOT NULL,
    fire_ms       BIGINT NOT NULL,
    outcome       TEXT NOT NULL,
    detail        TEXT,
    work_item_id  TEXT,
    recorded_ms   BIGINT NOT NULL,
    PRIMARY KEY (job, fire_ms)
);

CREATE TABLE dead_letters (
    id            TEXT PRIMARY KEY,
    work_item_id  TEXT NOT NULL REFERENCES work_items (id),
    job           TEXT NOT NULL,
    source        TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    payload       TEXT,
    reason        TEXT NOT NULL,
    attempts      BIGINT NOT NULL,
    last_error    TEXT,
    created_ms    BIGINT NOT NULL,
    replayed_ms   BIGINT
);
CREATE INDEX dead_letters_open ON dead_letters (replayed_ms, created_ms);
