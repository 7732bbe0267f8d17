package order

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	orderv1 "github.com/palisade-rpc/palisade/proto/order/v1"
)

// ImportOrders and TrackOrders are not served yet: they land with the
// streaming work. Until then they answer unimplemented (and the default
// policy denies them before that).
func (s *Service) ImportOrders(context.Context, *connect.ClientStream[orderv1.ImportOrdersRequest]) (*orderv1.ImportOrdersResponse, error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("ImportOrders is not implemented yet"))
}

// TrackOrders: see ImportOrders.
func (s *Service) TrackOrders(context.Context, *connect.BidiStream[orderv1.TrackOrdersRequest, orderv1.TrackOrdersResponse]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.New("TrackOrders is not implemented yet"))
}
