package password_test

import (
	"fmt"

	"github.com/palisade-rpc/palisade/security/password"
)

func Example() {
	// Production code uses password.DefaultParams(); these are cheap so the
	// example runs fast.
	params := password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}

	encoded, err := password.Hash("correct horse battery staple", params)
	if err != nil {
		fmt.Println(err)
		return
	}
	ok, err := password.Verify("correct horse battery staple", encoded)
	fmt.Println(ok, err)
	ok, err = password.Verify("Tr0ub4dor&3", encoded)
	fmt.Println(ok, err)
	fmt.Println(password.NeedsRehash(encoded, password.DefaultParams()))
	// Output:
	// true <nil>
	// false <nil>
	// true
}

func ExampleChecker() {
	params := password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}
	checker, err := password.NewChecker(params)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The user store: username → stored hash.
	stored, err := password.Hash("correct horse battery staple", params)
	if err != nil {
		fmt.Println(err)
		return
	}
	users := map[string]string{"alice": stored}

	login := func(username, pw string) bool {
		// An unknown user gives "": Check then does the same work as for a
		// known user and returns false.
		return checker.Check(pw, users[username])
	}
	fmt.Println(login("alice", "correct horse battery staple"))
	fmt.Println(login("alice", "wrong"))
	fmt.Println(login("mallory", "correct horse battery staple"))
	// Output:
	// true
	// false
	// false
}
