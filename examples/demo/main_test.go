package main

import (
	"strings"
	"testing"
)

func TestRedactBlanksPasswordsOfEveryConnectionForm(t *testing.T) {
	cases := []struct {
		connection string
		forms      []string // the password as it may appear in a message
	}{
		{"postgresql://app:hunter2@db:5432/main", []string{"hunter2"}},
		{"redis://:p%40ss%2Fw0rd@cache:6379/0", []string{"p@ss/w0rd", "p%40ss%2Fw0rd"}},
		{"postgresql://app:bad/pass#word@db:5432/x", []string{"bad/pass#word"}}, // not a URL
		{"host=db user=app password=hunter3 dbname=x", []string{"hunter3"}},
	}
	for _, c := range cases {
		text := redact("failed: "+c.connection+" ("+strings.Join(c.forms, ", ")+")",
			secretsOf(c.connection))
		for _, form := range c.forms {
			if strings.Contains(text, form) {
				t.Errorf("%q: %q is still in %q", c.connection, form, text)
			}
		}
		if !strings.HasPrefix(text, "failed: ") {
			t.Errorf("%q: redact removed more than the secrets: %q", c.connection, text)
		}
	}
}

func TestRedactLeavesTextWithoutSecretsAlone(t *testing.T) {
	for _, connection := range []string{"", "postgresql://app@db/main", "redis://cache:6379"} {
		if got := redact("dial tcp: connection refused", secretsOf(connection)); got != "dial tcp: connection refused" {
			t.Errorf("%q: %q", connection, got)
		}
	}
}
