package password

import (
	"errors"
	"strings"
	"testing"
)

// testParams are cheap enough for many hashes under -race.
var testParams = Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}

func mustHash(tb testing.TB, password string, p Params) string {
	tb.Helper()
	encoded, err := Hash(password, p)
	if err != nil {
		tb.Fatalf("Hash: %v", err)
	}
	return encoded
}

func TestHashVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	encoded := mustHash(t, "correct horse battery staple", testParams)
	if want := "$argon2id$v=19$m=64,t=1,p=1$"; !strings.HasPrefix(encoded, want) {
		t.Errorf("Hash = %q, want prefix %q", encoded, want)
	}
	ok, err := Verify("correct horse battery staple", encoded)
	if err != nil || !ok {
		t.Errorf("Verify(right password) = %v, %v; want true, nil", ok, err)
	}
	for _, wrong := range []string{"correct horse battery stapl", "Correct horse battery staple", "x"} {
		ok, err := Verify(wrong, encoded)
		if err != nil || ok {
			t.Errorf("Verify(%q) = %v, %v; want false, nil", wrong, ok, err)
		}
	}
}

// TestVerifyReferenceVectors checks compatibility with the reference
// implementation: the hashes were made with its CLI (Debian's argon2
// 0~20171227), e.g.
//
//	echo -n "correct horse battery staple" | argon2 palisadesalt0001 -id -t 1 -k 64 -p 1 -l 32 -e
func TestVerifyReferenceVectors(t *testing.T) {
	t.Parallel()
	const password = "correct horse battery staple"
	for _, encoded := range []string{
		"$argon2id$v=19$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN/329t0Qcsro",
		"$argon2id$v=19$m=256,t=2,p=2$cGFsaXNhZGVzYWx0MDAwMQ$jxyMpXkIMXTcYjy+wW/9Rw",
	} {
		ok, err := Verify(password, encoded)
		if err != nil || !ok {
			t.Errorf("Verify(%q) = %v, %v; want true, nil", encoded, ok, err)
		}
	}
}

func TestHashSaltsDiffer(t *testing.T) {
	t.Parallel()
	a := mustHash(t, "same password", testParams)
	b := mustHash(t, "same password", testParams)
	if a == b {
		t.Fatalf("two hashes of the same password are equal: %q", a)
	}
	ha, errA := parse(a)
	hb, errB := parse(b)
	if errA != nil || errB != nil {
		t.Fatalf("parse: %v, %v", errA, errB)
	}
	if string(ha.salt) == string(hb.salt) {
		t.Error("two hashes share a salt")
	}
	for _, encoded := range []string{a, b} {
		if ok, err := Verify("same password", encoded); err != nil || !ok {
			t.Errorf("Verify = %v, %v; want true, nil", ok, err)
		}
	}
}

func TestHashRefusesPassword(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		password string
		want     error
	}{
		"empty":    {"", ErrEmptyPassword},
		"too long": {strings.Repeat("a", MaxPasswordLength+1), ErrPasswordTooLong},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := Hash(tc.password, testParams); !errors.Is(err, tc.want) {
				t.Errorf("Hash: err = %v, want %v", err, tc.want)
			}
			encoded := mustHash(t, "something", testParams)
			if ok, err := Verify(tc.password, encoded); ok || !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, %v; want false, %v", ok, err, tc.want)
			}
		})
	}
	longest := strings.Repeat("a", MaxPasswordLength)
	encoded := mustHash(t, longest, testParams)
	if ok, err := Verify(longest, encoded); err != nil || !ok {
		t.Errorf("Verify(%d-byte password) = %v, %v; want true, nil", MaxPasswordLength, ok, err)
	}
}

func TestHashRefusesParams(t *testing.T) {
	t.Parallel()
	with := func(f func(*Params)) Params {
		p := testParams
		f(&p)
		return p
	}
	cases := map[string]Params{
		"zero":             {},
		"parallelism 0":    with(func(p *Params) { p.Parallelism = 0 }),
		"parallelism 17":   with(func(p *Params) { p.Parallelism = 17 }),
		"memory below 8p":  with(func(p *Params) { p.Parallelism = 2; p.Memory = 15 }),
		"memory over 1GiB": with(func(p *Params) { p.Memory = MaxMemory + 1 }),
		"iterations 0":     with(func(p *Params) { p.Iterations = 0 }),
		"iterations 17":    with(func(p *Params) { p.Iterations = 17 }),
		"salt 7 bytes":     with(func(p *Params) { p.SaltLength = 7 }),
		"salt 65 bytes":    with(func(p *Params) { p.SaltLength = 65 }),
		"key 15 bytes":     with(func(p *Params) { p.KeyLength = 15 }),
		"key 65 bytes":     with(func(p *Params) { p.KeyLength = 65 }),
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := Hash("password", p); !errors.Is(err, ErrInvalidParams) {
				t.Errorf("Hash(%+v): err = %v, want ErrInvalidParams", p, err)
			}
			if _, err := NewChecker(p); !errors.Is(err, ErrInvalidParams) {
				t.Errorf("NewChecker(%+v): err = %v, want ErrInvalidParams", p, err)
			}
		})
	}
}

func TestDefaultParams(t *testing.T) {
	t.Parallel()
	p := DefaultParams()
	want := Params{Memory: 65536, Iterations: 3, Parallelism: 1, SaltLength: 16, KeyLength: 32}
	if p != want {
		t.Errorf("DefaultParams() = %+v, want %+v", p, want)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("DefaultParams().Validate() = %v", err)
	}
	// The encoding, without paying for a 64 MiB hash under -race.
	encoded := encode(phc{params: p, salt: make([]byte, p.SaltLength), key: make([]byte, p.KeyLength)})
	if want := "$argon2id$v=19$m=65536,t=3,p=1$"; !strings.HasPrefix(encoded, want) {
		t.Errorf("encoding = %q, want prefix %q", encoded, want)
	}
}

func TestVerifyMalformed(t *testing.T) {
	t.Parallel()
	const salt = "cGFsaXNhZGVzYWx0MDAwMQ"                     // 16 bytes
	const key = "aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN/329t0Qcsro" // 32 bytes
	valid := "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key
	if _, err := Verify("correct horse battery staple", valid); err != nil {
		t.Fatalf("Verify(valid) = %v", err)
	}
	cases := map[string]string{
		"empty":                  "",
		"argon2i":                "$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"argon2d":                "$argon2d$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"upper-case alg":         "$ARGON2ID$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"bcrypt":                 "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
		"no leading $":           "argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"version 16":             "$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + key,
		"version missing":        "$argon2id$m=64,t=1,p=1$" + salt + "$" + key,
		"version 019":            "$argon2id$v=019$m=64,t=1,p=1$" + salt + "$" + key,
		"params missing":         "$argon2id$v=19$" + salt + "$" + key,
		"m missing":              "$argon2id$v=19$t=1,p=1$" + salt + "$" + key,
		"p missing":              "$argon2id$v=19$m=64,t=1$" + salt + "$" + key,
		"params reordered":       "$argon2id$v=19$t=1,m=64,p=1$" + salt + "$" + key,
		"param repeated":         "$argon2id$v=19$m=64,m=64,t=1,p=1$" + salt + "$" + key,
		"extra param":            "$argon2id$v=19$m=64,t=1,p=1,keyid=abc$" + salt + "$" + key,
		"empty value":            "$argon2id$v=19$m=,t=1,p=1$" + salt + "$" + key,
		"leading zero":           "$argon2id$v=19$m=064,t=1,p=1$" + salt + "$" + key,
		"plus sign":              "$argon2id$v=19$m=+64,t=1,p=1$" + salt + "$" + key,
		"negative":               "$argon2id$v=19$m=-64,t=1,p=1$" + salt + "$" + key,
		"space":                  "$argon2id$v=19$m=64, t=1,p=1$" + salt + "$" + key,
		"huge m":                 "$argon2id$v=19$m=4294967295,t=1,p=1$" + salt + "$" + key,
		"m just over 1GiB":       "$argon2id$v=19$m=1048577,t=1,p=1$" + salt + "$" + key,
		"m overflows uint32":     "$argon2id$v=19$m=4294967296,t=1,p=1$" + salt + "$" + key,
		"m below 8p":             "$argon2id$v=19$m=15,t=1,p=2$" + salt + "$" + key,
		"t=0":                    "$argon2id$v=19$m=64,t=0,p=1$" + salt + "$" + key,
		"t=17":                   "$argon2id$v=19$m=64,t=17,p=1$" + salt + "$" + key,
		"p=0":                    "$argon2id$v=19$m=64,t=1,p=0$" + salt + "$" + key,
		"p=255":                  "$argon2id$v=19$m=4096,t=1,p=255$" + salt + "$" + key,
		"p=256 wraps to 0":       "$argon2id$v=19$m=4096,t=1,p=256$" + salt + "$" + key,
		"bad base64 salt":        "$argon2id$v=19$m=64,t=1,p=1$cGFsaXNh*GVzYWx0MDAwMQ$" + key,
		"bad base64 hash":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$aOoVeWE42LVTgGoa!nuFD3tlTQBfNpDN/329t0Qcsro",
		"padded salt":            "$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + key,
		"url-safe base64":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN_329t0Qcsro",
		"non-zero padding bits":  "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN/329t0Qcsrp",
		"newline in hash":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$aOoVeWE42LVTgGoa\nznuFD3tlTQBfNpDN/329t0Qcsro",
		"short salt":             "$argon2id$v=19$m=64,t=1,p=1$" + b64.EncodeToString(make([]byte, 7)) + "$" + key,
		"long salt":              "$argon2id$v=19$m=64,t=1,p=1$" + b64.EncodeToString(make([]byte, 65)) + "$" + key,
		"empty salt":             "$argon2id$v=19$m=64,t=1,p=1$$" + key,
		"short hash":             "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + b64.EncodeToString(make([]byte, 15)),
		"long hash":              "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + b64.EncodeToString(make([]byte, 65)),
		"hash missing":           "$argon2id$v=19$m=64,t=1,p=1$" + salt,
		"trailing $":             valid + "$",
		"trailing junk field":    valid + "$junk",
		"trailing junk":          valid + ";junk", // base64-alphabet junk would just be a longer hash
		"trailing space":         valid + " ",
		"trailing NUL":           valid + "\x00",
		"leading space":          " " + valid,
		"longer than max length": valid + strings.Repeat("A", maxEncodedLength),
	}
	for name, encoded := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ok, err := Verify("correct horse battery staple", encoded)
			if ok || !errors.Is(err, ErrMalformedHash) {
				t.Fatalf("Verify = %v, %v; want false, ErrMalformedHash", ok, err)
			}
			if strings.Contains(err.Error(), salt) || strings.Contains(err.Error(), "aOoVeWE42") {
				t.Errorf("error %q quotes the stored hash", err)
			}
			if !NeedsRehash(encoded, testParams) {
				t.Error("NeedsRehash(malformed) = false, want true")
			}
		})
	}
}

func TestParseRoundTrip(t *testing.T) {
	t.Parallel()
	p := Params{Memory: 100, Iterations: 2, Parallelism: 3, SaltLength: 9, KeyLength: 17}
	encoded := mustHash(t, "password", p)
	h, err := parse(encoded)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if h.params != p {
		t.Errorf("parsed params = %+v, want %+v", h.params, p)
	}
	if got := encode(h); got != encoded {
		t.Errorf("encode(parse(s)) = %q, want %q", got, encoded)
	}
}

func TestNeedsRehash(t *testing.T) {
	t.Parallel()
	encoded := mustHash(t, "password", testParams)
	if NeedsRehash(encoded, testParams) {
		t.Error("NeedsRehash(same params) = true")
	}
	with := func(f func(*Params)) Params {
		p := testParams
		f(&p)
		return p
	}
	for name, p := range map[string]Params{
		"memory":      with(func(p *Params) { p.Memory *= 2 }),
		"iterations":  with(func(p *Params) { p.Iterations++ }),
		"parallelism": with(func(p *Params) { p.Parallelism++ }),
		"salt length": with(func(p *Params) { p.SaltLength++ }),
		"key length":  with(func(p *Params) { p.KeyLength++ }),
		"default":     DefaultParams(),
	} {
		if !NeedsRehash(encoded, p) {
			t.Errorf("NeedsRehash(params with other %s) = false", name)
		}
	}
}

func BenchmarkHashDefault(b *testing.B) {
	p := DefaultParams()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Hash("correct horse battery staple", p); err != nil {
			b.Fatal(err)
		}
	}
}
