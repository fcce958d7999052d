-- The store's epoch: an id made once per database, here, when the schema is created.
-- Every Redis entry carries it, and followers deliver only entries of their own
-- database's epoch (adr/0007): a Redis shared with another deployment, or one that kept
-- the streams of a database since dropped and recreated, can then never deliver a
-- message this database does not hold. One row, always.
CREATE TABLE store_epoch (
    epoch text    NOT NULL DEFAULT gen_random_uuid()::text,
    one   boolean NOT NULL DEFAULT true PRIMARY KEY CHECK (one)
);

INSERT INTO store_epoch DEFAULT VALUES;
