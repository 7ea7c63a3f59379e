-- A LineGuard edge store at schema version 1 (before the shadow table), as `sqlite3 .dump` writes it:
-- six decisions (two with their image), one feedback label, six outbox rows. Loaded by
-- tests/unit/test_store_shadow.py to check that opening it migrates in place and keeps every row.
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id INTEGER NOT NULL,
    prediction_key TEXT NOT NULL,
    station TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
INSERT INTO "feedback" VALUES(1,3,'line1:r0-3','line1','good','operator','v1 fixture',1780000100.0);
CREATE TABLE images (
    prediction_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    data BLOB NOT NULL
);
INSERT INTO "images" VALUES(3,'reject',268,X'89504E470D0A1A0A0000000D49484452000000080000000808020000004B6D29DC000000D349444154789C01C80037FF00F7C1BDCE9219EC14F4D2EE2C049C9E3B35EB6C2DC6511FCC00230685DD389107940D0E15098FCF171706280A543A67E06D00E1C8079E191AA2792028C84245A5E32731B2B0883E0CBBFE013F5D07C83E11150179A1D649C9B4896658E4F629CD66DCFB04592E631007D21E8C53D67B7CE7C5355D42DAE22DDAB6141F01CCB8C07C350CABB2A15029E124F8F9F004A2F9CF46B61265045BC5E5007D95BED75E43D1CD38110F02AB682FDF7771252B028895A689FEBEBB51096AE7CAA55DE8360CD10AEFBAEFAEEF569E5C312CE95BDA0000000049454E44AE426082');
INSERT INTO "images" VALUES(6,'reject',268,X'89504E470D0A1A0A0000000D49484452000000080000000808020000004B6D29DC000000D349444154789C01C80037FF01FD81ED730F3554F8BC4B03A5770D5CD05653DF0399FA899200643260A71F04DE5E6CA02C72E230C8FBD2F4C02EA84FFBA0048529ED83E079F84D4BDE16F88807AF2BA617C67DCDFB1338017DE1B0F5366D0807F7CBF689390BA08EF45EBFCE4157C4FC00E601A4D7D8FD45015BF4B2F7CC818FF9672AFB946477B5D200633F7DC3DD9402C87BE84F260B324E0BB4C7E2425FBC1934022878E1C865368D10DC966FB8EE841F547454A8CB5DE486390135FEC301E789E8C526201C377DEC856524F77257CDB9514A931E647C5FC2167F0000000049454E44AE426082');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema_version','1');
INSERT INTO "meta" VALUES('created_at','1780000100.0');
INSERT INTO "meta" VALUES('images_skipped_disk','0');
INSERT INTO "meta" VALUES('images_failed_full','0');
INSERT INTO "meta" VALUES('outbox_full_dead','0');
INSERT INTO "meta" VALUES('retention_predictions','0');
INSERT INTO "meta" VALUES('retention_images','0');
INSERT INTO "meta" VALUES('retention_unsynced','0');
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (sink, key)
);
INSERT INTO "outbox" VALUES(1,'jsonl','line1:r0-1','{"key":"line1:r0-1","frame_id":"r0-1","time":1780000001.0,"station":"line1","source":"video:/v.mp4#1","recipe":"vanilla","label":"good","score":0.1,"decision":"accept","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
INSERT INTO "outbox" VALUES(2,'jsonl','line1:r0-2','{"key":"line1:r0-2","frame_id":"r0-2","time":1780000002.0,"station":"line1","source":"video:/v.mp4#2","recipe":"chocolate","label":"good","score":0.1,"decision":"accept","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
INSERT INTO "outbox" VALUES(3,'jsonl','line1:r0-3','{"key":"line1:r0-3","frame_id":"r0-3","time":1780000003.0,"station":"line1","source":"video:/v.mp4#3","recipe":"vanilla","label":"bad","score":0.9,"decision":"reject","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
INSERT INTO "outbox" VALUES(4,'jsonl','line1:r0-4','{"key":"line1:r0-4","frame_id":"r0-4","time":1780000004.0,"station":"line1","source":"video:/v.mp4#4","recipe":"chocolate","label":"good","score":0.1,"decision":"accept","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
INSERT INTO "outbox" VALUES(5,'jsonl','line1:r0-5','{"key":"line1:r0-5","frame_id":"r0-5","time":1780000005.0,"station":"line1","source":"video:/v.mp4#5","recipe":"vanilla","label":"good","score":0.1,"decision":"accept","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
INSERT INTO "outbox" VALUES(6,'jsonl','line1:r0-6','{"key":"line1:r0-6","frame_id":"r0-6","time":1780000006.0,"station":"line1","source":"video:/v.mp4#6","recipe":"chocolate","label":"bad","score":0.9,"decision":"reject","threshold":0.5,"bundle_name":"toy","bundle_version":"1.0.0","latency_ms":1.5,"stats":{"mean":0.25,"std":0.1}}','pending',0,0.0,NULL,1780000100.0,NULL);
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    frame_id TEXT NOT NULL,
    time REAL NOT NULL,
    station TEXT NOT NULL,
    source TEXT NOT NULL,
    recipe TEXT,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    decision TEXT NOT NULL,
    threshold REAL NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    stats TEXT NOT NULL,
    created_at REAL NOT NULL
);
INSERT INTO "predictions" VALUES(1,'line1:r0-1','r0-1',1780000001.0,'line1','video:/v.mp4#1','vanilla','good',0.1,'accept',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
INSERT INTO "predictions" VALUES(2,'line1:r0-2','r0-2',1780000002.0,'line1','video:/v.mp4#2','chocolate','good',0.1,'accept',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
INSERT INTO "predictions" VALUES(3,'line1:r0-3','r0-3',1780000003.0,'line1','video:/v.mp4#3','vanilla','bad',0.9,'reject',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
INSERT INTO "predictions" VALUES(4,'line1:r0-4','r0-4',1780000004.0,'line1','video:/v.mp4#4','chocolate','good',0.1,'accept',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
INSERT INTO "predictions" VALUES(5,'line1:r0-5','r0-5',1780000005.0,'line1','video:/v.mp4#5','vanilla','good',0.1,'accept',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
INSERT INTO "predictions" VALUES(6,'line1:r0-6','r0-6',1780000006.0,'line1','video:/v.mp4#6','chocolate','bad',0.9,'reject',0.5,'toy','1.0.0',1.5,'{"mean": 0.25, "std": 0.1}',1780000100.0);
CREATE TABLE sync_batches (
    kind TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    created_at REAL NOT NULL,
    done_at REAL,
    PRIMARY KEY (kind, first_id)
);
CREATE TABLE sync_cursor (kind TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE INDEX predictions_time ON predictions (time);
CREATE INDEX feedback_prediction ON feedback (prediction_id);
CREATE INDEX outbox_queue ON outbox (sink, status, id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('predictions',6);
INSERT INTO "sqlite_sequence" VALUES('outbox',6);
INSERT INTO "sqlite_sequence" VALUES('feedback',1);
