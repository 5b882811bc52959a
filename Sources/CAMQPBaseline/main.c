// The C baseline for baton-transport-benchmark: the same workloads driven straight through librabbitmq,
// single-threaded, with nothing in between. Prints one "key value" line per figure.
//
//   amqp-c-baseline URL publish QUEUE COUNT WINDOW BODY_SIZE   -> publish_per_s
//   amqp-c-baseline URL consume QUEUE COUNT PREFETCH           -> consume_per_s
//   amqp-c-baseline URL latency QUEUE COUNT BODY_SIZE          -> p50_us, p99_us
//     (one message at a time: from publish until it is both confirmed and delivered back)
//   amqp-c-baseline URL relay QUEUE PREFETCH RULE...                -> runs until killed
//     (the ceiling of baton-benchmark: a service with no framework. RULE is IN=EXCHANGE/KEY[,EXCHANGE/KEY…]:
//     a delivery with routing key IN is published on as each EXCHANGE/KEY, persistent, with its body and
//     message id, and acknowledged once every one of them is confirmed; IN= acknowledges at once)
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "amqp-c-baseline: %s\n", what);
    exit(1);
}

static void check_reply(amqp_rpc_reply_t reply, const char *what) {
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) die(what);
}

static amqp_connection_state_t connect_url(const char *url_text) {
    struct amqp_connection_info info;
    char *url = strdup(url_text);
    if (amqp_parse_url(url, &info) != AMQP_STATUS_OK) die("bad URL");
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, info.host, info.port) != AMQP_STATUS_OK) die("cannot connect");
    check_reply(amqp_login(conn, info.vhost, 0, 131072, 10, AMQP_SASL_METHOD_PLAIN, info.user, info.password),
                "login failed");
    free(url);
    return conn;
}

static amqp_basic_properties_t persistent_properties(void) {
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = 2;
    props.content_type = amqp_cstring_bytes("application/octet-stream");
    return props;
}

/// Counts confirms; tags are 1-based and `multiple` settles every tag up to the one given.
typedef struct {
    unsigned char *settled;
    uint64_t low;  // every tag below `low` is settled
    uint64_t count;
} confirms_t;

static void settle(confirms_t *c, uint64_t tag, int multiple) {
    if (multiple) {
        for (uint64_t t = c->low; t <= tag; t++)
            if (!c->settled[t]) { c->settled[t] = 1; c->count++; }
    } else if (!c->settled[tag]) {
        c->settled[tag] = 1;
        c->count++;
    }
    while (c->settled[c->low]) c->low++;
}

/// Ends the run on a refusal: a nacked publish or a closed channel.
static void die_on_refusal(amqp_method_number_t method) {
    if (method == AMQP_BASIC_NACK_METHOD) die("broker nacked a publish");
    if (method == AMQP_CHANNEL_CLOSE_METHOD || method == AMQP_CONNECTION_CLOSE_METHOD) die("broker closed the channel");
}

static void handle_confirm_frame(amqp_frame_t *frame, confirms_t *c) {
    if (frame->frame_type != AMQP_FRAME_METHOD) return;
    if (frame->payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *ack = frame->payload.method.decoded;
        settle(c, ack->delivery_tag, ack->multiple);
    } else {
        die_on_refusal(frame->payload.method.id);
    }
}

/// Channel 1 publishes, in confirm mode.
static void open_publisher(amqp_connection_state_t conn) {
    amqp_channel_open(conn, 1);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    amqp_confirm_select(conn, 1);
    check_reply(amqp_get_rpc_reply(conn), "confirm.select");
}

/// Channel 3 consumes, with at most `prefetch` unacknowledged deliveries.
static void open_consumer(amqp_connection_state_t conn, long prefetch) {
    amqp_channel_open(conn, 3);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    amqp_basic_qos(conn, 3, 0, (uint16_t)prefetch, 0);
    check_reply(amqp_get_rpc_reply(conn), "basic.qos");
}

static void start_consuming(amqp_connection_state_t conn, const char *queue) {
    amqp_basic_consume(conn, 3, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "basic.consume");
}

static void run_publish(amqp_connection_state_t conn, const char *queue, long count, long window, long body_size) {
    open_publisher(conn);
    char *body = malloc(body_size);
    memset(body, 'x', body_size);
    amqp_bytes_t body_bytes = {(size_t)body_size, body};
    amqp_basic_properties_t props = persistent_properties();
    confirms_t c = {calloc(count + 2, 1), 1, 0};
    long published = 0;
    double start = now_seconds();
    while ((long)c.count < count) {
        while (published < count && published - (long)c.count < window) {
            if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props, body_bytes) !=
                AMQP_STATUS_OK)
                die("publish failed");
            published++;
        }
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) die("read failed");
        handle_confirm_frame(&frame, &c);
        amqp_maybe_release_buffers(conn);
    }
    double elapsed = now_seconds() - start;
    printf("publish_per_s %.1f\n", count / elapsed);
    free(c.settled);
    free(body);
}

static void run_consume(amqp_connection_state_t conn, const char *queue, long count, long prefetch) {
    open_consumer(conn, prefetch);
    double start = now_seconds();
    start_consuming(conn, queue);
    for (long received = 0; received < count; received++) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        check_reply(amqp_consume_message(conn, &envelope, NULL, 0), "consume failed");
        if (amqp_basic_ack(conn, 3, envelope.delivery_tag, 0) != AMQP_STATUS_OK) die("ack failed");
        amqp_destroy_envelope(&envelope);
    }
    double elapsed = now_seconds() - start;
    printf("consume_per_s %.1f\n", count / elapsed);
    amqp_channel_close(conn, 3, AMQP_REPLY_SUCCESS);
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void run_latency(amqp_connection_state_t conn, const char *queue, long count, long body_size) {
    open_publisher(conn);
    open_consumer(conn, 10);
    start_consuming(conn, queue);
    char *body = malloc(body_size);
    memset(body, 'x', body_size);
    amqp_bytes_t body_bytes = {(size_t)body_size, body};
    amqp_basic_properties_t props = persistent_properties();
    double *samples = malloc(sizeof(double) * count);
    confirms_t c = {calloc(count + 2, 1), 1, 0};
    for (long i = 0; i < count; i++) {
        double start = now_seconds();
        if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props, body_bytes) !=
            AMQP_STATUS_OK)
            die("publish failed");
        int delivered = 0;
        while (!delivered || (long)c.count <= i) {
            amqp_frame_t frame;
            if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) die("read failed");
            if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
                uint64_t tag = ((amqp_basic_deliver_t *)frame.payload.method.decoded)->delivery_tag;
                amqp_message_t message;
                check_reply(amqp_read_message(conn, 3, &message, 0), "read message");
                delivered = 1;
                amqp_destroy_message(&message);
                amqp_basic_ack(conn, 3, tag, 0);
            } else {
                handle_confirm_frame(&frame, &c);
            }
            amqp_maybe_release_buffers(conn);
        }
        samples[i] = (now_seconds() - start) * 1e6;
    }
    qsort(samples, count, sizeof(double), compare_doubles);
    printf("p50_us %.1f\np99_us %.1f\n", samples[count / 2], samples[(count * 99) / 100]);
    free(samples);
    free(c.settled);
    free(body);
}


#define RELAY_RING 65536  // more than any prefetch: a delivery tag or publish number maps to one slot

typedef struct {
    char *in;
    int outputs;
    amqp_bytes_t exchange[8], key[8];
} rule_t;

static rule_t parse_rule(const char *text) {
    rule_t rule;
    memset(&rule, 0, sizeof rule);
    char *copy = strdup(text), *equals = strchr(copy, '=');
    if (!equals) die("a rule is IN=EXCHANGE/KEY[,EXCHANGE/KEY...] or IN=");
    *equals = 0;
    rule.in = copy;
    for (char *target = strtok(equals + 1, ","); target; target = strtok(NULL, ",")) {
        char *slash = strchr(target, '/');
        if (!slash || rule.outputs == 8) die("a rule's target is EXCHANGE/KEY, at most 8 of them");
        *slash = 0;
        rule.exchange[rule.outputs] = amqp_cstring_bytes(target);
        rule.key[rule.outputs] = amqp_cstring_bytes(slash + 1);
        rule.outputs++;
    }
    return rule;
}

static void run_relay(amqp_connection_state_t conn, const char *queue, long prefetch, int rule_count, char **texts) {
    if (prefetch >= RELAY_RING / 8) die("PREFETCH too large");
    rule_t *rules = calloc(rule_count, sizeof(rule_t));
    for (int i = 0; i < rule_count; i++) rules[i] = parse_rule(texts[i]);
    open_publisher(conn);
    open_consumer(conn, prefetch);
    start_consuming(conn, queue);
    // publish number -> the delivery it came from; delivery -> its publishes not yet confirmed
    uint64_t *source = calloc(RELAY_RING, sizeof(uint64_t));
    int *unconfirmed = calloc(RELAY_RING, sizeof(int));
    uint64_t published = 0, confirmed_below = 1;
    unsigned char *confirmed = calloc(RELAY_RING, 1);
    for (;;) {
        amqp_frame_t frame;
        amqp_maybe_release_buffers(conn);
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) die("read failed");
        if (frame.frame_type != AMQP_FRAME_METHOD) continue;
        amqp_method_number_t method = frame.payload.method.id;
        if (method == AMQP_BASIC_DELIVER_METHOD) {
            amqp_basic_deliver_t *deliver = frame.payload.method.decoded;
            uint64_t tag = deliver->delivery_tag;
            rule_t *rule = NULL;
            for (int i = 0; i < rule_count && !rule; i++)
                if (deliver->routing_key.len == strlen(rules[i].in) &&
                    memcmp(deliver->routing_key.bytes, rules[i].in, deliver->routing_key.len) == 0)
                    rule = &rules[i];
            amqp_message_t message;
            check_reply(amqp_read_message(conn, 3, &message, 0), "read message");
            if (!rule || rule->outputs == 0) {
                amqp_basic_ack(conn, 3, tag, 0);
            } else {
                amqp_basic_properties_t props = persistent_properties();
                if (message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
                    props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
                    props.message_id = message.properties.message_id;
                }
                unconfirmed[tag % RELAY_RING] = rule->outputs;
                for (int i = 0; i < rule->outputs; i++) {
                    if (amqp_basic_publish(conn, 1, rule->exchange[i], rule->key[i], 0, 0, &props, message.body) !=
                        AMQP_STATUS_OK)
                        die("publish failed");
                    published++;
                    source[published % RELAY_RING] = tag;
                }
            }
            amqp_destroy_message(&message);
        } else if (method == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *ack = frame.payload.method.decoded;
            uint64_t from = ack->multiple ? confirmed_below : ack->delivery_tag;
            for (uint64_t n = from; n <= ack->delivery_tag; n++) {
                if (confirmed[n % RELAY_RING]) continue;
                confirmed[n % RELAY_RING] = 1;
                uint64_t tag = source[n % RELAY_RING];
                if (--unconfirmed[tag % RELAY_RING] == 0) amqp_basic_ack(conn, 3, tag, 0);
            }
            while (confirmed[confirmed_below % RELAY_RING]) confirmed[confirmed_below++ % RELAY_RING] = 0;
        } else {
            die_on_refusal(method);
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 6 && strcmp(argv[2], "relay") == 0) {
        long prefetch = atol(argv[4]);
        if (prefetch <= 0) die("PREFETCH must be positive");
        run_relay(connect_url(argv[1]), argv[3], prefetch, argc - 5, argv + 5);
    }
    if (argc < 6) {
        fprintf(stderr, "usage: %s URL publish|consume|latency QUEUE COUNT PARAM [BODY_SIZE]\n       %s URL relay QUEUE PREFETCH RULE...\n", argv[0], argv[0]);
        return 2;
    }
    const char *mode = argv[2], *queue = argv[3];
    long count = atol(argv[4]), param = atol(argv[5]);
    long body_size = argc > 6 ? atol(argv[6]) : 256;
    if (count <= 0 || param <= 0) die("COUNT and PARAM must be positive");
    amqp_connection_state_t conn = connect_url(argv[1]);
    if (strcmp(mode, "publish") == 0) run_publish(conn, queue, count, param, body_size);
    else if (strcmp(mode, "consume") == 0) run_consume(conn, queue, count, param);
    else if (strcmp(mode, "latency") == 0) run_latency(conn, queue, count, param);
    else die("unknown mode");
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return 0;
}
