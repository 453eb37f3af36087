-- MTA-STS policies of recipient domains (RFC 8461), as fetched: kept until
-- they expire, so a policy goes on protecting a domain across restarts and
-- while an attacker hides its TXT record or its policy server (§5.1).

CREATE TABLE mta_sts_policies (
    domain     TEXT PRIMARY KEY,
    -- The id of the `_mta-sts` TXT record the policy was fetched under.
    policy_id  TEXT NOT NULL,
    -- The policy file as served.
    policy     TEXT NOT NULL,
    fetched_at BIGINT NOT NULL,
    -- fetched_at + max_age (seconds since the epoch).
    expires_at BIGINT NOT NULL
);
