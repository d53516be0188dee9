// An independent Pub/Sub client against `fulfilld sandbox --tls`: pozil's
// salesforce-pubsub-api-client (https://github.com/pozil/pub-sub-api-node-client), written for
// Salesforce, not for this project. Used as a Salesforce integration would use it, with its own
// OAuth 2.0 JWT bearer flow, userinfo call and gRPC channel; only configured, never patched.
//
// Configuration (the sandbox's `<state-dir>/sandbox.env` holds the SF_* settings):
//   SF_LOGIN_URL, SF_CLIENT_ID, SF_USERNAME, SF_PRIVATE_KEY_PATH, SF_PUBSUB_ENDPOINT,
//   SF_PROVISION_EVENT_CHANNEL (default /event/OrderProvisionRequested__e)
//   NODE_EXTRA_CA_CERTS=<state-dir>/pubsub-ca.pem   Node's own setting: trust the sandbox's test CA
//                                                    for the https token and userinfo calls
//   --order-id ID        publish OrderProvisionRequested__e for this Order (required)
//   --admin-url URL      also publish one event through the sandbox admin API (optional)
//   --admin-order-id ID  the Order of that event (default: the --order-id)
//
// It publishes, subscribes from EARLIEST until every event it published came back, prints one
// JSON line of what it received on stdout and exits 0. Any failure: a message on stderr and a
// non-zero exit; the whole run gives up after 60 s.

import fs from 'node:fs';
import PubSubApiClient from 'salesforce-pubsub-api-client';

const OVERALL_TIMEOUT_MS = 60_000;

function fail(message, cause) {
    const detail = cause ? `: ${describe(cause)}` : '';
    process.stderr.write(`thirdparty client: ${message}${detail}\n`);
    process.exit(1);
}

function describe(err) {
    const parts = [];
    for (let e = err; e; e = e.cause) {
        parts.push(e.message ?? String(e));
    }
    return parts.join(': ');
}

function args(argv) {
    const out = {};
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i];
        const value = argv[i + 1];
        if (!key.startsWith('--') || value === undefined) {
            fail(`bad arguments near ${key}: expected --name value pairs`);
        }
        out[key.slice(2)] = value;
    }
    return out;
}

function setting(name) {
    const value = process.env[name];
    if (!value) {
        fail(`${name} is not set (source the sandbox's sandbox.env)`);
    }
    return value;
}

// JSON with bigint (avro longs) as strings.
function toJson(value) {
    return JSON.stringify(value, (_key, v) => (typeof v === 'bigint' ? v.toString() : v));
}

// The client logs through this; everything goes to stderr so stdout holds only the result.
const logger = {
    debug: () => {},
    info: (...a) => process.stderr.write(`info: ${a.map(String).join(' ')}\n`),
    warn: (...a) => process.stderr.write(`warn: ${a.map(String).join(' ')}\n`),
    error: (...a) => process.stderr.write(`error: ${a.map(String).join(' ')}\n`)
};

async function main() {
    const opts = args(process.argv.slice(2));
    const orderId = opts['order-id'] ?? fail('--order-id is required');
    const topic = process.env.SF_PROVISION_EVENT_CHANNEL || '/event/OrderProvisionRequested__e';
    const loginUrl = setting('SF_LOGIN_URL');
    if (loginUrl.startsWith('https://') && !process.env.NODE_EXTRA_CA_CERTS) {
        logger.warn('NODE_EXTRA_CA_CERTS is not set: the sandbox test CA will not be trusted');
    }
    const keyPath = setting('SF_PRIVATE_KEY_PATH');
    let privateKey;
    try {
        privateKey = fs.readFileSync(keyPath, 'utf8');
    } catch (err) {
        fail(`cannot read SF_PRIVATE_KEY_PATH ${keyPath}`, err);
    }
    // The client wants "host:port"; the sandbox (like the host's setting) gives a URL.
    const endpoint = setting('SF_PUBSUB_ENDPOINT');
    const pubSubEndpoint = endpoint.includes('://') ? new URL(endpoint).host : endpoint;

    const client = new PubSubApiClient(
        {
            authType: 'oauth-jwt-bearer',
            loginUrl,
            clientId: setting('SF_CLIENT_ID'),
            username: setting('SF_USERNAME'),
            privateKey,
            pubSubEndpoint,
            // The client trusts only its bundled public CAs for gRPC; its documented switch for
            // a server certificate they did not sign (the sandbox's test CA).
            rejectUnauthorizedSsl: false
        },
        logger
    );
    try {
        await client.connect();
    } catch (err) {
        fail('connect failed', err);
    }

    const expected = new Map(); // correlation key (event id) -> what was published
    let published;
    try {
        const result = await client.publish(topic, {
            CreatedDate: Date.now(),
            CreatedById: '005000000000001AAA',
            // avro-js encodes a ["null","string"] union from its wrapped form.
            OrderId__c: { string: orderId }
        });
        published = {
            order_id: orderId,
            replay_id: String(result.replayId),
            correlation_key: result.correlationKey
        };
        if (result.error && result.error.code) {
            fail(`publish refused: ${toJson(result.error)}`);
        }
        expected.set(result.correlationKey, published);
    } catch (err) {
        fail('publish failed', err);
    }

    let adminPublished = null;
    if (opts['admin-url']) {
        const adminOrder = opts['admin-order-id'] ?? orderId;
        try {
            const response = await fetch(new URL('sandbox/events', opts['admin-url']), {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ order_id: adminOrder })
            });
            const body = await response.json();
            if (response.status !== 200) {
                fail(`admin publish answered ${response.status}: ${toJson(body)}`);
            }
            adminPublished = {
                order_id: adminOrder,
                replay_id: body.replay_id,
                correlation_key: body.event_uuid
            };
            expected.set(body.event_uuid, adminPublished);
        } catch (err) {
            fail('admin publish failed', err);
        }
    }

    const received = [];
    await new Promise((resolve) => {
        client.subscribeFromEarliestEvent(
            topic,
            (_subscription, type, data) => {
                switch (type) {
                    case 'event': {
                        const payload = data.payload ?? {};
                        const event = {
                            id: data.id,
                            replay_id: String(data.replayId),
                            schema_id: data.schemaId,
                            order_id: payload.OrderId__c ?? null,
                            created_by_id: payload.CreatedById ?? null
                        };
                        received.push(event);
                        expected.delete(data.id);
                        if (expected.size === 0) {
                            resolve();
                        }
                        break;
                    }
                    case 'error':
                        fail('subscription failed', data);
                        break;
                    case 'end':
                        if (expected.size > 0) {
                            fail('the subscription ended before every published event came back');
                        }
                        break;
                    default:
                        break;
                }
            },
            null
        );
    });
    process.stdout.write(
        `${toJson({ published, admin_published: adminPublished, received })}\n`
    );
    client.close();
    process.exit(0);
}

setTimeout(
    () => fail(`gave up after ${OVERALL_TIMEOUT_MS / 1000} s`),
    OVERALL_TIMEOUT_MS
);
main().catch((err) => fail('unexpected error', err));
