package user

// SetAdmitted makes a call f(username) for each login admitted to a
// password check, before it waits for a hashing slot; f may block to hold
// the login there. Call it before serving.
func (a *AuthService) SetAdmitted(f func(username string)) { a.admitted = f }
