# Configuration of the default authorization policy (package palisade.authz).
#
# Edit these constants, or shadow them with a bundle of your own, to run the
# sample services under another trust domain or with other delegates.
package palisade.config

# trust_domain is the SPIFFE trust domain whose workloads the policy knows:
# only they may call health, reflection and Login.
trust_domain := "palisade.local"

# order_service is the workload of the order service, the one service that
# may read a user on that user's behalf.
order_service := "spiffe://palisade.local/svc/order"

# delegates is the delegation allow-list: the workloads that may call
# AuthService/ExchangeToken to trade a user's token for a delegated token
# (one with an act claim naming the workload), and present such tokens.
delegates := {"spiffe://palisade.local/svc/order"}

# watchers are the workloads that may subscribe to the user change feed
# (UserService/WatchUserChanges) to keep their caches of users fresh. They
# subscribe as themselves, with their certificate and no user token.
watchers := {"spiffe://palisade.local/svc/order"}
