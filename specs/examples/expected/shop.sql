-- sinew schema for spec 'shop'
-- Every statement is idempotent: applying this twice changes nothing.

-- Product
CREATE TABLE IF NOT EXISTS "product" (
  "id" uuid PRIMARY KEY,
  "version" bigint NOT NULL CHECK ("version" >= 1),
  "created_at" timestamptz NOT NULL,
  "updated_at" timestamptz NOT NULL,
  "deleted_at" timestamptz,
  "sku" text NOT NULL,
  "name" text NOT NULL,
  "price_cents" bigint NOT NULL,
  "stock" bigint NOT NULL,
  CONSTRAINT "product_sku_check" CHECK (char_length("sku") <= 64),
  CONSTRAINT "product_name_check" CHECK (char_length("name") <= 200),
  CONSTRAINT "product_price_cents_check" CHECK ("price_cents" >= 0)
);
COMMENT ON CONSTRAINT "product_sku_check" ON "product" IS 'sinew {"maxLength":64}';
COMMENT ON CONSTRAINT "product_name_check" ON "product" IS 'sinew {"maxLength":200}';
COMMENT ON CONSTRAINT "product_price_cents_check" ON "product" IS 'sinew {"minimum":0}';
CREATE UNIQUE INDEX IF NOT EXISTS "product_sku_key" ON "product" ("sku") WHERE "deleted_at" IS NULL;

-- Order
CREATE TABLE IF NOT EXISTS "order" (
  "id" uuid PRIMARY KEY,
  "version" bigint NOT NULL CHECK ("version" >= 1),
  "created_at" timestamptz NOT NULL,
  "updated_at" timestamptz NOT NULL,
  "deleted_at" timestamptz,
  "status" text NOT NULL DEFAULT 'pending',
  "customer" text NOT NULL,
  "product" uuid NOT NULL,
  "quantity" bigint NOT NULL,
  "total_cents" bigint NOT NULL,
  "payment_id" text,
  CONSTRAINT "order_status_check" CHECK ("status" IN ('pending', 'paid', 'shipped', 'cancelled')),
  CONSTRAINT "order_quantity_check" CHECK ("quantity" >= 1 AND "quantity" <= 100)
);
COMMENT ON CONSTRAINT "order_status_check" ON "order" IS 'sinew {"enum":["pending","paid","shipped","cancelled"]}';
COMMENT ON CONSTRAINT "order_quantity_check" ON "order" IS 'sinew {"minimum":1,"maximum":100}';
CREATE INDEX IF NOT EXISTS "order_customer_idx" ON "order" ("customer");
CREATE INDEX IF NOT EXISTS "order_product_idx" ON "order" ("product");

-- references
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = '"order"'::regclass AND contype = 'f' AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = '"order"'::regclass AND attname = 'product')]::int2[]) THEN
    ALTER TABLE "order" ADD CONSTRAINT "order_product_fkey" FOREIGN KEY ("product") REFERENCES "product" ("id") NOT VALID;
  END IF;
END $$;

-- sinew: the audit log, append-only (A3): the database refuses updates,
-- deletes and truncation; each entry carries the hash of the previous one (A4).
-- `entry` is the exact canonical JSON text that `hash` is the SHA-256 of
-- (query it as `entry::jsonb`). Entries are placed here by the sequencer
-- (`queued_at`: when the request's transaction queued it).
CREATE TABLE IF NOT EXISTS "sinew_audit" (
  "seq" bigint PRIMARY KEY,
  "execution" text NOT NULL,
  "kind" text NOT NULL,
  "entry" text NOT NULL,
  "prev" text NOT NULL,
  "hash" text NOT NULL,
  "recorded_at" timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE "sinew_audit" ADD COLUMN IF NOT EXISTS "queued_at" timestamptz;
CREATE INDEX IF NOT EXISTS "sinew_audit_execution_idx" ON "sinew_audit" ("execution");
-- No index on `hash` (earlier versions had a unique one): nothing looks an
-- entry up by it, and a random 64-character key made every append write
-- to a random page of a large index.
ALTER TABLE "sinew_audit" DROP CONSTRAINT IF EXISTS "sinew_audit_hash_key";
CREATE OR REPLACE FUNCTION "sinew_audit_append_only"() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE OR REPLACE TRIGGER "sinew_audit_no_update_delete"
  BEFORE UPDATE OR DELETE ON "sinew_audit"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: audit entries not yet in the chain. A request's transaction
-- queues its entries here (with the SHA-256 of `entry`, `digest`), without
-- a lock; the sequencer (one at a time across instances) moves them into
-- `sinew_audit` in `id` order, in batches, shortly after they commit. The
-- database refuses updates and truncation; a row leaves only by the
-- sequencer's move, which deletes it in the transaction that chains it.
CREATE TABLE IF NOT EXISTS "sinew_audit_queue" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "execution" text NOT NULL,
  "kind" text NOT NULL,
  "entry" text NOT NULL,
  "digest" text NOT NULL,
  "queued_at" timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Entries are compressed with lz4 where the server has it, in the chain
-- and in the queue: a `transfer`'s entry then stays in its row (no TOAST
-- row to write and delete) and a read's, which holds the rows it read,
-- writes a fraction of the log. Without lz4 the queue stores entries as
-- written (pglz would cost more CPU than the bytes save).
ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET STORAGE EXTERNAL;
DO $$ BEGIN
  ALTER TABLE "sinew_audit" ALTER COLUMN "entry" SET COMPRESSION lz4;
  ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET COMPRESSION lz4;
  ALTER TABLE "sinew_audit_queue" ALTER COLUMN "entry" SET STORAGE EXTENDED;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL;
END $$;
CREATE OR REPLACE TRIGGER "sinew_audit_queue_no_update"
  BEFORE UPDATE ON "sinew_audit_queue"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_queue_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit_queue"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: signed checkpoints of the audit chain's head (Ed25519), append-only:
-- `sinew audit verify --checkpoint FILE` checks the chain still holds one.
CREATE TABLE IF NOT EXISTS "sinew_audit_checkpoint" (
  "seq" bigint NOT NULL,
  "hash" text NOT NULL,
  "key" text NOT NULL,
  "signed_at" timestamptz NOT NULL,
  "checkpoint" text NOT NULL,
  PRIMARY KEY ("seq", "key")
);
CREATE OR REPLACE TRIGGER "sinew_audit_checkpoint_no_update_delete"
  BEFORE UPDATE OR DELETE ON "sinew_audit_checkpoint"
  FOR EACH ROW EXECUTE FUNCTION "sinew_audit_append_only"();
CREATE OR REPLACE TRIGGER "sinew_audit_checkpoint_no_truncate"
  BEFORE TRUNCATE ON "sinew_audit_checkpoint"
  FOR EACH STATEMENT EXECUTE FUNCTION "sinew_audit_append_only"();

-- sinew: idempotency keys (kept 24 hours).
CREATE TABLE IF NOT EXISTS "sinew_idempotency" (
  "scope" text NOT NULL,
  "key" text NOT NULL,
  "fingerprint" text NOT NULL,
  "claimed_at" timestamptz NOT NULL,
  "status" integer,
  "body" text,
  PRIMARY KEY ("scope", "key")
);

-- sinew: each cron tool's schedule and when it was first seen (a missed
-- time is caught up only if it is later).
CREATE TABLE IF NOT EXISTS "sinew_schedule" (
  "tool" text PRIMARY KEY,
  "schedule" text NOT NULL,
  "timezone" text NOT NULL,
  "first_seen" timestamptz NOT NULL
);

-- sinew: the outbox: messages `emit` recorded with a transaction's
-- writes, delivered by `sinew serve` after the commit. The deliverer
-- locks a message's row while it sends it; a delivered message's row is
-- deleted (its delivery is audited). No key: the row is the message, the
-- one index finds what is due.
CREATE TABLE IF NOT EXISTS "sinew_messages" (
  "message" text NOT NULL,
  "attempts" integer NOT NULL DEFAULT 0,
  "next_attempt_at" timestamptz NOT NULL DEFAULT now(),
  "failed_at" timestamptz,
  "last_error" text
);
CREATE INDEX IF NOT EXISTS "sinew_messages_due_idx" ON "sinew_messages" ("next_attempt_at")
  WHERE "failed_at" IS NULL;

-- sinew: the outbox of sinew before `sinew_messages` (a wider row, a key,
-- a claim and a delivery written to it). Kept for servers of that version
-- during a rolling deploy: what they record is forwarded to
-- `sinew_messages` (and delivered by this version), and what they left is
-- moved there.
CREATE TABLE IF NOT EXISTS "sinew_outbox" (
  "seq" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "id" uuid NOT NULL,
  "execution" text NOT NULL,
  "tool" text NOT NULL,
  "node" text NOT NULL,
  "service" text NOT NULL,
  "operation" text NOT NULL,
  "message" text NOT NULL,
  "created_at" timestamptz NOT NULL DEFAULT now(),
  "attempts" integer NOT NULL DEFAULT 0,
  "next_attempt_at" timestamptz NOT NULL DEFAULT now(),
  "claimed_until" timestamptz,
  "delivered_at" timestamptz,
  "failed_at" timestamptz,
  "last_error" text
);
CREATE OR REPLACE FUNCTION "sinew_outbox_forward"() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "sinew_messages" ("message") VALUES (NEW."message");
  RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER "sinew_outbox_forward" BEFORE INSERT ON "sinew_outbox"
  FOR EACH ROW EXECUTE FUNCTION "sinew_outbox_forward"();
WITH "left" AS (DELETE FROM "sinew_outbox" RETURNING *)
INSERT INTO "sinew_messages" ("message", "attempts", "next_attempt_at", "failed_at", "last_error")
  SELECT "message", "attempts", "next_attempt_at", "failed_at", "last_error" FROM "left"
  WHERE "delivered_at" IS NULL ORDER BY "seq";

-- sinew: every spec served, by the hash its audit entries name (`bundle`):
-- the spec's text as served, what `sinew audit replay` runs them on.
CREATE TABLE IF NOT EXISTS "sinew_bundle" (
  "hash" text PRIMARY KEY,
  "spec" text NOT NULL,
  "served_at" timestamptz NOT NULL DEFAULT now()
);

-- sinew: the schemas migrated to (the hash of each plan applied).
CREATE TABLE IF NOT EXISTS "sinew_schema" (
  "plan" text PRIMARY KEY,
  "applied_at" timestamptz NOT NULL DEFAULT now()
);

-- sinew: every migration run (`sinew migrate --status`): the spec (its
-- name and bundle hash), the schema's hash (`plan`, as in `sinew_schema`),
-- the steps and SQL it ran, the hash of sinew's own tables' DDL (`tables`:
-- a migration runs that DDL only when it changed), when it started and
-- finished (null: cut short after its transaction; the next migration
-- finishes what is left).
CREATE TABLE IF NOT EXISTS "sinew_migrations" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "spec" text NOT NULL,
  "bundle" text,
  "plan" text NOT NULL,
  "steps" text NOT NULL,
  "sql" text NOT NULL,
  "by" text NOT NULL,
  "tables" text,
  "started_at" timestamptz NOT NULL DEFAULT now(),
  "finished_at" timestamptz
);

-- sinew: review items, one per `escalate` policy a call raised: recorded
-- by the sequencer in the transaction that chains the call's audit entry
-- (`seq`), open until a caller with a role of the spec's `reviews`
-- resolves it (`POST /reviews/{id}/resolve`, audited as a `review` entry).
CREATE TABLE IF NOT EXISTS "sinew_reviews" (
  "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "seq" bigint NOT NULL,
  "policy" text NOT NULL,
  "execution" text NOT NULL,
  "tool" text NOT NULL,
  "subject" text,
  "raised_at" timestamptz NOT NULL,
  "resolved_at" timestamptz,
  "resolved_by" text,
  "note" text,
  UNIQUE ("seq", "policy")
);
CREATE INDEX IF NOT EXISTS "sinew_reviews_open_idx" ON "sinew_reviews" ("id")
  WHERE "resolved_at" IS NULL;

-- sinew: API keys for machine callers (`sinew keys`): the SHA-256 of the
-- key (never the key), the roles and claims a call with it has, an
-- optional expiry; revoked keys are kept (the audit log names their ids).
CREATE TABLE IF NOT EXISTS "sinew_keys" (
  "id" text PRIMARY KEY,
  "hash" text NOT NULL UNIQUE,
  "name" text NOT NULL,
  "roles" text[] NOT NULL,
  "claims" text NOT NULL DEFAULT '{}',
  "created_at" timestamptz NOT NULL DEFAULT now(),
  "expires_at" timestamptz,
  "revoked_at" timestamptz
);

-- sinew: rate-limit counters, one row per scope and minute.
CREATE TABLE IF NOT EXISTS "sinew_rate" (
  "scope" text NOT NULL,
  "window_start" timestamptz NOT NULL,
  "hits" bigint NOT NULL,
  PRIMARY KEY ("scope", "window_start")
);
