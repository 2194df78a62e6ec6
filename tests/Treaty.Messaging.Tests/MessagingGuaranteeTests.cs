using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Npgsql;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Tests.Support;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests;

/// <summary>The kit's guarantees on a real database; one subclass per dialect.</summary>
public abstract class MessagingGuaranteeTests : IAsyncLifetime
{
    private readonly InMemoryTransport _transport = new();
    private readonly ManualTimeProvider _time = new();

    protected abstract Task<ParticipantDatabase> CreateDatabaseAsync(string name);

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task StateChangeAndOutboxRow_CommitOrRollBackTogether()
    {
        var handled = new List<string>();
        var orders = await StartAsync("orders");
        await StartAsync("wallet", consumers: new() { ["order.created"] = (tx, message, ct) => { handled.Add(message.CorrelationId); return Task.CompletedTask; } });

        await PlaceOrderAsync(orders, "o-committed", commit: true);
        await PlaceOrderAsync(orders, "o-rolled-back", commit: false);

        (await orders.ScalarAsync("SELECT COUNT(*) FROM orders")).ShouldBe(1);
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox")).ShouldBe(1);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(1, 1, 0));
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(0, 0, 0));
        handled.ShouldBe(["o-committed"]);
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL")).ShouldBe(0);
    }

    [Fact]
    public async Task OutboxRow_CarriesIdTraceParentSourceAndCorrelation()
    {
        var orders = await StartAsync("orders");
        using var listener = Listen("publisher");
        using var span = new ActivitySource("publisher").StartActivity("place order")!;

        var messageId = await PlaceOrderAsync(orders, "o-1", commit: true);
        await orders.Relay.RelayOnceAsync(CancellationToken.None);

        var sent = _transport.Sent.ShouldHaveSingleItem();
        sent.MessageId.ShouldBe(messageId);
        Guid.Parse(messageId).Version.ShouldBe(7);
        sent.TraceParent.ShouldBe(span.Id);
        sent.Source.ShouldBe("orders");
        sent.CorrelationId.ShouldBe("o-1");
        sent.CreatedAt.ShouldBe(_time.GetUtcNow());
        JsonDocument.Parse(sent.Body).RootElement.GetProperty("orderId").GetString().ShouldBe("o-1");
    }

    [Fact]
    public async Task Relay_AsAService_SendsARowWhenItsTransactionCommits_WithoutWaitingForThePoll()
    {
        var orders = await StartAsync("orders");
        await orders.Relay.StartAsync(CancellationToken.None);
        try
        {
            await PlaceOrderAsync(orders, "o-rolled-back", commit: false);
            string messageId;
            await using (var tx = await orders.Database.BeginAsync(CancellationToken.None))
            {
                messageId = await orders.Outbox.PublishAsync(tx, "order.created", "o-1", JsonDocument.Parse("{}").RootElement, CancellationToken.None);
                // Time for a relay woken too early (at the insert) to look, find nothing and sleep
                // until the poll; on PostgreSQL it would (SQLite makes it wait for the commit).
                await Task.Delay(300);
                await tx.CommitAsync(CancellationToken.None);
            }

            // The manual clock never moves: only the nudge of the commit can wake the relay.
            await EventuallyAsync(() => _transport.Sent.Any(message => message.MessageId == messageId));
            _transport.Sent.ShouldHaveSingleItem();
        }
        finally
        {
            await orders.Relay.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Relay_AfterASendFailure_TriesAgainOnlyAfterTheBackoff_ThenSends()
    {
        var orders = await StartAsync("orders");
        _transport.FailNextSends = 1;
        await orders.Relay.StartAsync(CancellationToken.None);
        try
        {
            var messageId = await PlaceOrderAsync(orders, "o-1", commit: true);
            await EventuallyAsync(() => _transport.SendCalls == 1);
            await Task.Delay(300); // real time; the backoff runs on the manual clock, which has not moved
            _transport.SendCalls.ShouldBe(1);
            (await orders.ScalarAsync("SELECT send_attempts FROM treaty_outbox")).ShouldBe(1);

            await EventuallyAsync(() =>
            {
                _time.Advance(MessagingDefaults.RetryDelay);
                return _transport.Sent.Any(message => message.MessageId == messageId);
            });
            _transport.SendCalls.ShouldBe(2);
            await EventuallyAsync(async () => await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL") == 0);
        }
        finally
        {
            await orders.Relay.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task DuplicateDelivery_IsHandledOnce()
    {
        var calls = 0;
        var wallet = await StartAsync("wallet", consumers: new()
        {
            ["order.created"] = async (tx, message, ct) => { calls++; await Service.RecordEffectAsync(tx, "wallet", message.MessageId); },
        });
        var message = Message("order.created", "o-1");

        (await DeliverAsync(wallet, message)).ShouldBe(DeliveryOutcome.Handled);
        (await DeliverAsync(wallet, message)).ShouldBe(DeliveryOutcome.Handled);

        calls.ShouldBe(1);
        (await wallet.EffectsAsync(message.MessageId)).ShouldBe(1);
    }

    [Fact]
    public async Task ConcurrentDeliveriesOfOneMessage_AreHandledOnce()
    {
        var calls = 0;
        var wallet = await StartAsync("wallet", consumers: new()
        {
            ["order.created"] = async (tx, message, ct) =>
            {
                Interlocked.Increment(ref calls);
                await Service.RecordEffectAsync(tx, "wallet", message.MessageId);
                await Task.Delay(50, ct); // hold the inbox row uncommitted while the copies arrive
            },
        });
        var message = Message("order.created", "o-1");

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => DeliverAsync(wallet, message))));

        outcomes.ShouldAllBe(outcome => outcome == DeliveryOutcome.Handled);
        calls.ShouldBe(1);
        (await wallet.EffectsAsync(message.MessageId)).ShouldBe(1);
    }

    [Fact]
    public async Task Relay_SendsCommittedRowsInPublicationOrder_AndMarksEachSentOnce()
    {
        var orders = await StartAsync("orders");
        var published = new List<string>();
        for (var i = 0; i < 7; i++)
        {
            published.Add(await PlaceOrderAsync(orders, $"o-{i}", commit: true));
        }

        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(7, 7, 0));
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(0, 0, 0));

        _transport.Sent.Select(message => message.MessageId).ShouldBe(published);
    }

    [Fact]
    public async Task Relay_AMessageNoSubscriberCanTakeNow_DoesNotHoldBackTheOthers()
    {
        var orders = await StartAsync("orders");
        var wallet = await StartAsync("wallet", maxAttempts: 100, consumers: new() { ["order.created"] = PoisonUnless(() => false) });
        var first = await PlaceOrderAsync(orders, "o-1", commit: true);
        var poison = await PlaceOrderAsync(orders, "poison", commit: true);
        var last = await PlaceOrderAsync(orders, "o-3", commit: true);

        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(3, 2, 1));

        (await wallet.EffectsAsync(first)).ShouldBe(1);
        (await wallet.EffectsAsync(last)).ShouldBe(1);
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL AND message_id = @id", ("id", poison))).ShouldBe(1);
        (await orders.ScalarAsync("SELECT send_attempts FROM treaty_outbox WHERE message_id = @id", ("id", poison))).ShouldBe(1);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).Read.ShouldBe(0);
        _time.Advance(MessagingDefaults.RetryDelay);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(1, 0, 1));
        (await orders.Relay.UntilNextDueAsync(CancellationToken.None)).ShouldBe(MessagingDefaults.RetryDelay * 2); // doubled
    }

    [Fact]
    public async Task PoisonMessage_DeadLettersAfterMaxAttempts_WhileOtherMessagesKeepFlowing()
    {
        var wallet = await StartAsync("wallet", maxAttempts: 3, consumers: new() { ["order.created"] = PoisonUnless(() => false) });
        var poison = Message("order.created", "poison");

        (await DeliverAsync(wallet, poison)).ShouldBe(DeliveryOutcome.Retry);
        var good1 = Message("order.created", "o-1");
        (await DeliverAsync(wallet, good1)).ShouldBe(DeliveryOutcome.Handled);
        (await DeliverAsync(wallet, poison)).ShouldBe(DeliveryOutcome.Retry);
        (await DeliverAsync(wallet, poison)).ShouldBe(DeliveryOutcome.DeadLettered);
        var good2 = Message("order.created", "o-2");
        (await DeliverAsync(wallet, good2)).ShouldBe(DeliveryOutcome.Handled);

        (await wallet.EffectsAsync(good1.MessageId)).ShouldBe(1);
        (await wallet.EffectsAsync(good2.MessageId)).ShouldBe(1);
        (await wallet.EffectsAsync(poison.MessageId)).ShouldBe(0); // written before each throw, rolled back each time
        var letter = (await wallet.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem();
        letter.MessageId.ShouldBe(poison.MessageId);
        letter.Status.ShouldBe("dead");
        letter.CorrelationId.ShouldBe("poison");
        letter.Body.ShouldBe(Encoding.UTF8.GetString(poison.Body.Span));
        letter.Error.ShouldContain("insufficient funds");
        letter.Attempts.Select(attempt => attempt.Seq).ShouldBe([1, 2, 3]);
        letter.Attempts.ShouldAllBe(attempt => attempt.Error.Contains("insufficient funds") && !attempt.Archived);
    }

    [Fact]
    public async Task Attempts_AreDurable_ACountSurvivesARestart()
    {
        var poisonHandler = PoisonUnless(() => false);
        var database = await CreateDatabaseAsync("wallet");
        var before = await Service.StartAsync("wallet", database, _transport, _time, o => o.MaxAttempts = 2, new Dictionary<string, MessageConsumer> { ["order.created"] = poisonHandler });
        var poison = Message("order.created", "poison");
        (await DeliverAsync(before, poison)).ShouldBe(DeliveryOutcome.Retry);

        var after = await Service.StartAsync("wallet", database, new InMemoryTransport(), _time, o => o.MaxAttempts = 2, new Dictionary<string, MessageConsumer> { ["order.created"] = poisonHandler });

        (await DeliverAsync(after, poison)).ShouldBe(DeliveryOutcome.DeadLettered);
    }

    [Fact]
    public async Task Replay_AfterTheCauseIsFixed_HandlesTheMessageOnce_AndKeepsTheHistory()
    {
        var fixedCause = false;
        var wallet = await StartAsync("wallet", maxAttempts: 2, consumers: new() { ["order.created"] = PoisonUnless(() => fixedCause) });
        var poison = Message("order.created", "poison");
        await DeliverAsync(wallet, poison);
        (await DeliverAsync(wallet, poison)).ShouldBe(DeliveryOutcome.DeadLettered);
        var id = (await wallet.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem().Id;

        // Replayed before the fix: it fails again, with a fresh count, and is dead again.
        (await wallet.DeadLetters.ReplayAsync(id, CancellationToken.None)).ShouldBeTrue();
        (await wallet.Replays.ReplayDueAsync(CancellationToken.None)).ShouldBe(0);
        (await wallet.Replays.ReplayDueAsync(CancellationToken.None)).ShouldBe(0); // not due: backing off
        _time.Advance(TimeSpan.FromMinutes(1));
        (await wallet.Replays.ReplayDueAsync(CancellationToken.None)).ShouldBe(0);
        var dead = (await wallet.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem();
        dead.Status.ShouldBe("dead");
        dead.Attempts.Select(a => (a.Seq, a.Archived)).ShouldBe([(1, true), (2, true), (3, false), (4, false)]);

        fixedCause = true;
        (await wallet.DeadLetters.ReplayAsync(id, CancellationToken.None)).ShouldBeTrue();
        (await wallet.Replays.ReplayDueAsync(CancellationToken.None)).ShouldBe(1);

        (await wallet.EffectsAsync(poison.MessageId)).ShouldBe(1);
        var replayed = (await wallet.DeadLetters.ListAsync(CancellationToken.None)).ShouldHaveSingleItem();
        replayed.Status.ShouldBe("replayed");
        replayed.ReplayedAt.ShouldBe(_time.GetUtcNow());
        replayed.Attempts.Count.ShouldBe(4);
        replayed.Attempts.ShouldAllBe(attempt => attempt.Archived);
        (await wallet.DeadLetters.ReplayAsync(id, CancellationToken.None)).ShouldBeFalse();
        (await wallet.Replays.ReplayDueAsync(CancellationToken.None)).ShouldBe(0);
        (await DeliverAsync(wallet, poison)).ShouldBe(DeliveryOutcome.Handled); // a late redelivery: the inbox has it
        (await wallet.EffectsAsync(poison.MessageId)).ShouldBe(1);
    }

    [Fact]
    public async Task RelayCrashBetweenSendAndMarkSent_RedeliversTheMessage_HandledOnce()
    {
        var deliveries = 0;
        var orders = await StartAsync("orders");
        var wallet = await StartAsync("wallet", consumers: new()
        {
            ["order.created"] = async (tx, message, ct) => { deliveries++; await Service.RecordEffectAsync(tx, "wallet", message.MessageId); },
        });
        var messageId = await PlaceOrderAsync(orders, "o-1", commit: true);

        _transport.CrashAfterNextSend = true;
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(1, 0, 1));
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL")).ShouldBe(1);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).Read.ShouldBe(0); // backing off
        _time.Advance(MessagingDefaults.RetryDelay);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).ShouldBe(new RelayPass(1, 1, 0));

        _transport.Sent.Count(message => message.MessageId == messageId).ShouldBe(2);
        deliveries.ShouldBe(1);
        (await wallet.EffectsAsync(messageId)).ShouldBe(1);
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL")).ShouldBe(0);
        (await orders.ScalarAsync("SELECT send_attempts FROM treaty_outbox")).ShouldBe(1);
    }

    [Fact]
    public async Task HandlerRetry_LeavesTheOutboxRowUnsent_UntilTheConsumerHandlesIt()
    {
        var failures = 1;
        var orders = await StartAsync("orders");
        var wallet = await StartAsync("wallet", consumers: new()
        {
            ["order.created"] = async (tx, message, ct) =>
            {
                await Service.RecordEffectAsync(tx, "wallet", message.MessageId);
                if (failures-- > 0)
                {
                    throw new TimeoutException("the bank is slow");
                }
            },
        });
        var messageId = await PlaceOrderAsync(orders, "o-1", commit: true);

        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).Failed.ShouldBe(1);
        (await orders.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL")).ShouldBe(1);
        (await orders.Relay.UntilNextDueAsync(CancellationToken.None)).ShouldBe(MessagingDefaults.RetryDelay);
        _time.Advance(MessagingDefaults.RetryDelay);
        (await orders.Relay.RelayOnceAsync(CancellationToken.None)).Sent.ShouldBe(1);

        (await wallet.EffectsAsync(messageId)).ShouldBe(1);
    }

    [Fact]
    public async Task FollowUpEvent_PublishedByAHandler_CommitsOrRollsBackWithTheHandling()
    {
        var fail = true;
        Service wallet = null!;
        wallet = await StartAsync("wallet", consumers: new()
        {
            ["order.created"] = async (tx, message, ct) =>
            {
                await wallet.Outbox.PublishAsync(tx, "payment.reserved", message.CorrelationId, JsonDocument.Parse("""{"amount":10}""").RootElement, ct);
                if (fail)
                {
                    throw new InvalidOperationException("failed after publishing");
                }
            },
        });
        var message = Message("order.created", "o-7");

        (await DeliverAsync(wallet, message)).ShouldBe(DeliveryOutcome.Retry);
        (await wallet.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox")).ShouldBe(0);
        fail = false;
        (await DeliverAsync(wallet, message)).ShouldBe(DeliveryOutcome.Handled);
        (await DeliverAsync(wallet, message)).ShouldBe(DeliveryOutcome.Handled);

        (await wallet.ScalarAsync("SELECT COUNT(*) FROM treaty_outbox WHERE type = 'payment.reserved' AND correlation_id = 'o-7'")).ShouldBe(1);
    }

    [Fact]
    public async Task ConsumerSpan_ContinuesThePublishersTrace_AndCarriesTheCorrelationId()
    {
        using var listener = Listen(TreatyMessagingTelemetry.ActivitySourceName);
        var spans = new System.Collections.Concurrent.ConcurrentQueue<Activity>();
        listener.ActivityStopped = spans.Enqueue; // every test's spans: the listener is global
        var wallet = await StartAsync("wallet", consumers: new() { ["order.created"] = (tx, message, ct) => Task.CompletedTask });
        var traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

        var gid = "o-" + Guid.NewGuid();

        await DeliverAsync(wallet, Message("order.created", gid) with { TraceParent = traceParent });

        var span = spans.Where(a => a.GetTagItem("treaty.gid") as string == gid).ShouldHaveSingleItem();
        span.OperationName.ShouldBe("treaty.consume order.created");
        span.Kind.ShouldBe(ActivityKind.Consumer);
        span.TraceId.ToHexString().ShouldBe("0af7651916cd43dd8448eb211c80319c");
        span.ParentSpanId.ToHexString().ShouldBe("b7ad6b7169203331");
        span.GetTagItem("treaty.gid").ShouldBe(gid);
        span.GetTagItem("treaty.messaging.outcome").ShouldBe("handled");
    }

    private Task<Service> StartAsync(string name, int maxAttempts = MessagingDefaults.MaxAttempts, Dictionary<string, MessageConsumer>? consumers = null) =>
        StartOnNewDatabaseAsync(name, maxAttempts, consumers);

    private async Task<Service> StartOnNewDatabaseAsync(string name, int maxAttempts, Dictionary<string, MessageConsumer>? consumers) =>
        await Service.StartAsync(name, await CreateDatabaseAsync(name), _transport, _time, o => o.MaxAttempts = maxAttempts, consumers);

    private static Task<DeliveryOutcome> DeliverAsync(Service service, TransportMessage message) =>
        service.Pipeline.DeliverAsync(message, service.Consumers.TryGet(message.Type, out var consumer) ? consumer : throw new InvalidOperationException(), CancellationToken.None);

    private static async Task EventuallyAsync(Func<bool> condition)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            deadline.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(10), "the condition never held");
            await Task.Delay(25);
        }
    }

    private static async Task EventuallyAsync(Func<Task<bool>> condition)
    {
        var deadline = Stopwatch.StartNew();
        while (!await condition())
        {
            deadline.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(10), "the condition never held");
            await Task.Delay(25);
        }
    }

    private static MessageConsumer PoisonUnless(Func<bool> fixedCause) => async (tx, message, ct) =>
    {
        await Service.RecordEffectAsync(tx, "wallet", message.MessageId);
        if (message.CorrelationId == "poison" && !fixedCause())
        {
            throw new InvalidOperationException("insufficient funds (a bug in the wallet)");
        }
    };

    private static async Task<string> PlaceOrderAsync(Service orders, string orderId, bool commit)
    {
        await using var transaction = await orders.Database.BeginAsync(CancellationToken.None);
        await using (var insert = transaction.CreateCommand("INSERT INTO orders (id, status) VALUES (@id, 'pending')", ("id", orderId)))
        {
            await insert.ExecuteNonQueryAsync();
        }

        var messageId = await orders.Outbox.PublishAsync(transaction, "order.created", orderId, JsonDocument.Parse($$"""{"orderId":"{{orderId}}"}""").RootElement, CancellationToken.None);
        if (commit)
        {
            await transaction.CommitAsync(CancellationToken.None);
        }

        return messageId;
    }

    private TransportMessage Message(string type, string correlationId) => new(
        Guid.CreateVersion7().ToString(), type, correlationId, Encoding.UTF8.GetBytes($$"""{"orderId":"{{correlationId}}"}"""), null, "orders", _time.GetUtcNow());

    private static ActivityListener Listen(string source)
    {
        var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == source,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
        };
        ActivitySource.AddActivityListener(listener);
        return listener;
    }
}

public sealed class SqliteMessagingGuaranteeTests : MessagingGuaranteeTests
{
    private readonly TempDir _dir = new("treaty-messaging");

    protected override Task<ParticipantDatabase> CreateDatabaseAsync(string name) =>
        Task.FromResult<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(_dir.Path, name + ".db")));

    public override Task DisposeAsync()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlMessagingGuaranteeTests(PostgresFixture postgres) : MessagingGuaranteeTests
{
    private readonly List<NpgsqlDataSource> _sources = [];

    protected override async Task<ParticipantDatabase> CreateDatabaseAsync(string name)
    {
        var source = NpgsqlDataSource.Create(await postgres.Server.CreateDatabaseAsync("msg_" + name));
        _sources.Add(source);
        return new PostgreSqlParticipantDatabase(source);
    }

    public override async Task DisposeAsync()
    {
        foreach (var source in _sources)
        {
            await source.DisposeAsync();
        }
    }
}
