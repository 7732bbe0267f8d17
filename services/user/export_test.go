package user

import "github.com/palisade-rpc/palisade/services/internal/pgtest"

// PG is the PostgreSQL server of the package's tests, internal and
// external, started by the first test that needs a database on it and
// stopped by TestMain.
var PG pgtest.Shared

// SetAdmitted makes a call f(username) for each login admitted to a
// password check, before it waits for a hashing slot; f may block to hold
// the login there. Call it before serving.
func (a *AuthService) SetAdmitted(f func(username string)) { a.admitted = f }
