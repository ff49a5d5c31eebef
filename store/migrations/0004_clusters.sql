-- Kubeconfigs of dedicated clusters (isolation: cluster), sealed like secrets: the
-- whole file is one sealed value, never stored or returned in clear.
CREATE TABLE clusters (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
                                        AND name <> 'default'),
    context     text,
    sealed      jsonb       NOT NULL CHECK (
        jsonb_typeof(sealed) = 'object'
        AND sealed ?& ARRAY['key_id', 'wrapped_key', 'nonce', 'ciphertext']
        AND sealed - ARRAY['key_id', 'wrapped_key', 'nonce', 'ciphertext'] = '{}'::jsonb
    ),
    key_id      text        GENERATED ALWAYS AS (sealed ->> 'key_id') STORED,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL
);
