package order

import "github.com/palisade-rpc/palisade/services/internal/pgtest"

// PG is the PostgreSQL server of the package's tests, internal and
// external, started by the first test that needs a database on it and
// stopped by TestMain.
var PG pgtest.Shared

// MinReplyReserve is the least time CreateOrder keeps back from its
// caller's deadline to answer after the user lookup.
const MinReplyReserve = minReplyReserve
