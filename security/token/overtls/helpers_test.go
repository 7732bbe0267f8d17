package overtls_test

import (
	"errors"

	"connectrpc.com/connect"
)

func asConnectError(err error, target **connect.Error) bool { return errors.As(err, target) }
