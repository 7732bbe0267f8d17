-- Login: an argon2id hash in PHC form ($argon2id$v=19$m=…,t=…,p=…$salt$hash),
-- empty for a user who cannot log in.
ALTER TABLE users ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
