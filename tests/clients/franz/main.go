// franz: produce N records through a Kafka bootstrap address, then consume them
// back and print each as one JSON line, so a Python test can compare what a
// franz-go client sent and received through the gateway.
//
// With -read-only it produces nothing: it reads N records of the comma-separated
// -topics from their start, with the isolation level and per-partition fetch size
// given, and prints each record's bytes exactly (base64, as Go's JSON encodes
// []byte), for the masking suite's byte-level checks.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
)

// exact is one record as -read-only prints it: keys, values and header values
// are bytes (null when the record has none).
type exact struct {
	Topic     string      `json:"topic"`
	Partition int32       `json:"partition"`
	Offset    int64       `json:"offset"`
	Key       []byte      `json:"key"`
	Value     []byte      `json:"value"`
	Headers   []exactPair `json:"headers"`
}

type exactPair struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

type line struct {
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Key       string            `json:"key"`
	Value     string            `json:"value"`
	Headers   map[string]string `json:"headers"`
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap address")
	topic := flag.String("topic", "", "topic")
	count := flag.Int("n", 10000, "records to produce and consume")
	timeout := flag.Duration("timeout", 120*time.Second, "overall timeout")
	tokenURL := flag.String("token-url", "", "OAuth token endpoint; when set, sign in with SASL/OAUTHBEARER")
	clientID := flag.String("client-id", "", "OAuth client id")
	clientSecret := flag.String("client-secret", "", "OAuth client secret")
	readOnly := flag.Bool("read-only", false, "only read N records of -topics (no produce)")
	topics := flag.String("topics", "", "with -read-only: comma-separated topics")
	isolation := flag.String("isolation", "read_uncommitted", "with -read-only: read_committed or read_uncommitted")
	partitionBytes := flag.Int("partition-fetch-bytes", 1<<20, "with -read-only: most bytes a fetch asks per partition")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	common := []kgo.Opt{kgo.SeedBrokers(*brokers)}
	if *tokenURL != "" {
		// franz-go's standard OAUTHBEARER hook: it asks for a token whenever it signs in.
		common = append(common, kgo.SASL(oauth.Oauth(func(ctx context.Context) (oauth.Auth, error) {
			token, err := fetchToken(ctx, *tokenURL, *clientID, *clientSecret)
			return oauth.Auth{Token: token}, err
		})))
	}

	if *readOnly {
		level := kgo.ReadUncommitted()
		if *isolation == "read_committed" {
			level = kgo.ReadCommitted()
		}
		consume(ctx, append(common, kgo.ConsumeTopics(strings.Split(*topics, ",")...),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(level),
			kgo.FetchMaxPartitionBytes(int32(*partitionBytes))), *count, exactLine)
		return
	}

	producer, err := kgo.NewClient(append(common, kgo.DefaultProduceTopic(*topic))...)
	if err != nil {
		fail("producer: %v", err)
	}
	for i := 0; i < *count; i++ {
		record := &kgo.Record{
			Key:     []byte(fmt.Sprintf("key-%d", i)),
			Value:   []byte(fmt.Sprintf("value-%d", i)),
			Headers: []kgo.RecordHeader{{Key: "h", Value: []byte(fmt.Sprintf("hv-%d", i))}},
		}
		producer.Produce(ctx, record, func(_ *kgo.Record, err error) {
			if err != nil {
				fail("produce: %v", err)
			}
		})
	}
	if err := producer.Flush(ctx); err != nil {
		fail("flush: %v", err)
	}
	producer.Close()

	consume(ctx, append(common, kgo.ConsumeTopics(*topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())),
		*count, func(r *kgo.Record) any {
			headers := map[string]string{}
			for _, h := range r.Headers {
				headers[h.Key] = string(h.Value)
			}
			return line{r.Partition, r.Offset, string(r.Key), string(r.Value), headers}
		})
}

// exactLine is a record as -read-only prints it.
func exactLine(r *kgo.Record) any {
	headers := []exactPair{}
	for _, h := range r.Headers {
		headers = append(headers, exactPair{h.Key, h.Value})
	}
	return exact{r.Topic, r.Partition, r.Offset, r.Key, r.Value, headers}
}

// consume prints the first count records the client's fetches return, one JSON line each, as show makes them.
func consume(ctx context.Context, opts []kgo.Opt, count int, show func(*kgo.Record) any) {
	consumer, err := kgo.NewClient(opts...)
	if err != nil {
		fail("consumer: %v", err)
	}
	defer consumer.Close()
	out := json.NewEncoder(os.Stdout)
	seen := 0
	for seen < count {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			fail("timed out after %d records", seen)
		}
		fetches.EachError(func(t string, p int32, err error) { fail("fetch %s/%d: %v", t, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			_ = out.Encode(show(r))
			seen++
		})
	}
}

// fetchToken runs the OAuth client-credentials grant against the IdP's token endpoint.
func fetchToken(ctx context.Context, endpoint, id, secret string) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token endpoint answered %s", resp.Status)
	}
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	return body.AccessToken, nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "franz: "+format+"\n", args...)
	os.Exit(1)
}
