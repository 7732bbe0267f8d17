package token

import (
	"log/slog"
	"time"
)

// VerifierOption configures NewVerifier.
type VerifierOption interface {
	applyVerifier(*verifierConfig)
}

// IssuerOption configures NewIssuer.
type IssuerOption interface {
	applyIssuer(*issuerConfig)
}

// RemoteKeysOption configures NewRemoteKeys.
type RemoteKeysOption interface {
	applyRemoteKeys(*remoteKeysConfig)
}

// DelegatorOption configures NewDelegator.
type DelegatorOption interface {
	applyDelegator(*delegatorConfig)
}

// Option configures a Verifier and a Delegator alike: it is both a
// VerifierOption and a DelegatorOption, and means the same for both.
type Option interface {
	VerifierOption
	DelegatorOption
}

type verifierConfig struct {
	issuer, audience string
	keys             KeySource
	leeway           time.Duration
	cacheSize        int
	maxTokenSize     int
	now              func() time.Time // tests set it through export_test.go
}

type issuerConfig struct {
	issuer   string
	audience []string
	ttl      time.Duration
	now      func() time.Time // tests set it through export_test.go
}

type remoteKeysConfig struct {
	minRefreshInterval time.Duration
	refreshInterval    time.Duration
	timeout            time.Duration
	logger             *slog.Logger
}

type delegatorConfig struct {
	margin    time.Duration
	cacheSize int
	now       func() time.Time // tests set it through export_test.go
}

type verifierOptionFunc func(*verifierConfig)

func (f verifierOptionFunc) applyVerifier(c *verifierConfig) { f(c) }

type issuerOptionFunc func(*issuerConfig)

func (f issuerOptionFunc) applyIssuer(c *issuerConfig) { f(c) }

type remoteKeysOptionFunc func(*remoteKeysConfig)

func (f remoteKeysOptionFunc) applyRemoteKeys(c *remoteKeysConfig) { f(c) }

type delegatorOptionFunc func(*delegatorConfig)

func (f delegatorOptionFunc) applyDelegator(c *delegatorConfig) { f(c) }

// WithLeeway sets how much clock skew the verifier absorbs in exp, nbf and
// iat (default DefaultLeeway, 30s; d < 0 keeps the default).
func WithLeeway(d time.Duration) VerifierOption {
	return verifierOptionFunc(func(c *verifierConfig) {
		if d >= 0 {
			c.leeway = d
		}
	})
}

// WithMaxTokenSize makes the verifier refuse tokens longer than n bytes
// before any parsing (default DefaultMaxTokenSize, 8 KiB; n ≤ 0 keeps the
// default).
func WithMaxTokenSize(n int) VerifierOption {
	return verifierOptionFunc(func(c *verifierConfig) {
		if n > 0 {
			c.maxTokenSize = n
		}
	})
}

// WithCacheSize bounds a cache at n entries (default DefaultCacheSize): a
// Verifier's cache of verified tokens, a Delegator's cache of exchanged
// tokens. n ≤ 0 turns the cache off: every token is verified, every call
// exchanges.
func WithCacheSize(n int) Option {
	return cacheSizeOption(n)
}

type cacheSizeOption int

func (o cacheSizeOption) applyVerifier(c *verifierConfig)   { c.cacheSize = int(o) }
func (o cacheSizeOption) applyDelegator(c *delegatorConfig) { c.cacheSize = int(o) }

// WithAudience sets the default aud of the access tokens the issuer signs:
// every service that accepts them. A Grant's own Audience replaces it.
// Without it, every Grant must name its audience.
func WithAudience(aud ...string) IssuerOption {
	aud = append([]string(nil), aud...)
	return issuerOptionFunc(func(c *issuerConfig) { c.audience = aud })
}

// WithTTL sets the default lifetime of the access tokens the issuer signs
// (default DefaultTTL, 15 minutes; d ≤ 0 keeps the default). A Grant's own
// TTL replaces it.
func WithTTL(d time.Duration) IssuerOption {
	return issuerOptionFunc(func(c *issuerConfig) {
		if d > 0 {
			c.ttl = d
		}
	})
}

// WithMinRefreshInterval sets the shortest time between two fetches caused
// by tokens with unknown key IDs (default 30s), so a flood of forged kids
// costs at most one fetch per interval.
func WithMinRefreshInterval(d time.Duration) RemoteKeysOption {
	return remoteKeysOptionFunc(func(c *remoteKeysConfig) {
		if d > 0 {
			c.minRefreshInterval = d
		}
	})
}

// WithRefreshInterval sets how often RemoteKeys.Run refetches the set
// (default 5m), so retired keys stop verifying.
func WithRefreshInterval(d time.Duration) RemoteKeysOption {
	return remoteKeysOptionFunc(func(c *remoteKeysConfig) {
		if d > 0 {
			c.refreshInterval = d
		}
	})
}

// WithTimeout bounds one fetch of the key set (default 5s).
func WithTimeout(d time.Duration) RemoteKeysOption {
	return remoteKeysOptionFunc(func(c *remoteKeysConfig) {
		if d > 0 {
			c.timeout = d
		}
	})
}

// WithLogger sets the logger (default slog.Default()) that RemoteKeys tells
// of failed fetches and of key set changes, and an ExchangeHandler of the
// exchanges it grants and refuses. It is a RemoteKeysOption and an
// ExchangeOption.
func WithLogger(l *slog.Logger) LoggerOption {
	return loggerOption{logger: l}
}

// LoggerOption is WithLogger's option: a RemoteKeysOption and an
// ExchangeOption.
type LoggerOption interface {
	RemoteKeysOption
	ExchangeOption
}

type loggerOption struct{ logger *slog.Logger }

func (o loggerOption) applyRemoteKeys(c *remoteKeysConfig) {
	if o.logger != nil {
		c.logger = o.logger
	}
}

func (o loggerOption) applyExchange(c *exchangeConfig) {
	if o.logger != nil {
		c.logger = o.logger
	}
}

// WithMargin sets how long before its expiry a Delegator stops reusing a
// cached token (default 30s), so that it does not expire in flight.
func WithMargin(d time.Duration) DelegatorOption {
	return delegatorOptionFunc(func(c *delegatorConfig) {
		if d > 0 {
			c.margin = d
		}
	})
}
