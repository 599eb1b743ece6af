-- The schema release 0.1.0 (schema_version 1) created with Base.metadata.create_all on sqlite,
-- before Alembic: tests/store/test_migrations.py upgrades a database built from it.

CREATE TABLE api_keys (
	id VARCHAR(32) NOT NULL, 
	user_id VARCHAR(128) NOT NULL, 
	key_type VARCHAR(16) NOT NULL, 
	is_admin BOOLEAN NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	prefix VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	last_used_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_api_keys_key_type CHECK (key_type IN ('free', 'pro')), 
	UNIQUE (key_hash)
);

CREATE INDEX ix_api_keys_user_id ON api_keys (user_id);

CREATE TABLE audit_events (
	id INTEGER NOT NULL, 
	timestamp DATETIME NOT NULL, 
	user_id VARCHAR(128) NOT NULL, 
	action VARCHAR(64) NOT NULL, 
	resource VARCHAR(512) NOT NULL, 
	result VARCHAR(16) NOT NULL, 
	source_ip VARCHAR(64), 
	details JSON NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_audit_events_result CHECK (result IN ('success', 'failure'))
);

CREATE INDEX ix_audit_events_action ON audit_events (action);

CREATE INDEX ix_audit_events_timestamp ON audit_events (timestamp);

CREATE INDEX ix_audit_events_user_id ON audit_events (user_id);

CREATE TABLE backup_runs (
	id INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	ok BOOLEAN NOT NULL, 
	path TEXT, 
	sha256 VARCHAR(64), 
	size_bytes BIGINT, 
	error TEXT, 
	PRIMARY KEY (id)
);

CREATE TABLE config_state (
	id INTEGER NOT NULL, 
	recorded_at DATETIME NOT NULL, 
	settings_hash VARCHAR(64) NOT NULL, 
	snapshot JSON NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE export_records (
	id VARCHAR(32) NOT NULL, 
	platform VARCHAR(16) NOT NULL, 
	format VARCHAR(16) NOT NULL, 
	quantization VARCHAR(8) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	duration_s DOUBLE, 
	size_bytes BIGINT, 
	manifest JSON, 
	error_code VARCHAR(64), 
	error_message TEXT, 
	requested_by VARCHAR(256) NOT NULL, 
	host VARCHAR(255) NOT NULL, 
	model TEXT NOT NULL, 
	out_dir TEXT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_export_records_status CHECK (status IN ('queued', 'running', 'succeeded', 'failed'))
);

CREATE INDEX ix_export_records_created_at ON export_records (created_at);

CREATE INDEX ix_export_records_group ON export_records (host, platform, format, quantization);

CREATE INDEX ix_export_records_status ON export_records (status);

CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (version)
);

INSERT INTO schema_version (version, applied_at) VALUES (1, '2026-01-01 00:00:00+00:00');
