package user

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/palisade-rpc/palisade/internal/pemfile"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security/password"
)

// Credentials returns the password hash of user id ("" when the user has
// none) and the user. A missing user wraps ErrNotFound.
func (s *Store) Credentials(ctx context.Context, id string) (string, *userv1.User, error) {
	u, err := get(ctx, s.db, id)
	if err != nil {
		return "", nil, fmt.Errorf("user store: %w", err)
	}
	var hash string
	if err := s.db.QueryRowContext(ctx, "SELECT password_hash FROM users WHERE id = $1", id).Scan(&hash); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return "", nil, fmt.Errorf("user store: %w", ErrNotFound)
		}
		return "", nil, fmt.Errorf("user store: credentials: %w", err)
	}
	return hash, u, nil
}

// SetPasswordHash stores an argon2id hash (from password.Hash) for user id.
func (s *Store) SetPasswordHash(ctx context.Context, id, hash string) error {
	res, err := s.db.ExecContext(ctx, "UPDATE users SET password_hash = $1 WHERE id = $2", hash, id)
	if err != nil {
		return fmt.Errorf("user store: set password: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("user store: set password: %w", err)
	} else if n == 0 {
		return fmt.Errorf("user store: set password: %w", ErrNotFound)
	}
	return nil
}

// EnsureDemoPasswords gives the demo users (alice, bob, admin) fresh random
// passwords when the file at path does not exist: it stores their hashes
// and writes the passwords to path as JSON {"alice": "…", …} with mode 0600,
// for `palisade token` and the demo. With the file present it does nothing.
// It reports whether it wrote the file.
func EnsureDemoPasswords(ctx context.Context, store *Store, path string, params password.Params) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("demo passwords: %w", err)
	}
	passwords := map[string]string{}
	for _, u := range demoUsers() {
		var b [18]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		pw := base64.RawURLEncoding.EncodeToString(b[:])
		hash, err := password.Hash(pw, params)
		if err != nil {
			return false, fmt.Errorf("demo passwords: %w", err)
		}
		if err := store.SetPasswordHash(ctx, u.GetId(), hash); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // the demo user was never seeded into this database
			}
			return false, fmt.Errorf("demo passwords: %w", err)
		}
		passwords[u.GetId()] = pw
	}
	data, err := json.MarshalIndent(passwords, "", "  ")
	if err != nil {
		return false, fmt.Errorf("demo passwords: %w", err)
	}
	if err := pemfile.WriteFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return false, fmt.Errorf("demo passwords: %w", err)
	}
	return true, nil
}

// ReadDemoPasswords reads the file EnsureDemoPasswords wrote.
func ReadDemoPasswords(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("demo passwords: %w", err)
	}
	var passwords map[string]string
	if err := json.Unmarshal(data, &passwords); err != nil {
		return nil, fmt.Errorf("demo passwords %s: %w", path, err)
	}
	return passwords, nil
}
