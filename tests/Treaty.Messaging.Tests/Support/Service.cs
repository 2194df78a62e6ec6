using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests.Support;

/// <summary>
/// One service's messaging parts wired by hand on a real database: its outbox and relay, its
/// inbox pipeline, dead letters and replays, subscribed on <paramref name="transport"/>.
/// </summary>
internal sealed class Service
{
    private Service(ParticipantDatabase database, IMessageTransport transport, MessagingOptions options, TimeProvider time)
    {
        Database = database;
        Options = options;
        Pipeline = new ConsumerPipeline(database, options, time, NullLogger<ConsumerPipeline>.Instance);
        Relay = new OutboxRelay(database, transport, options, time, NullLogger<OutboxRelay>.Instance, FullDelay);
        Outbox = new Outbox(options.ServiceName, time, Relay.Nudge);
        Replays = new ReplayWorker(Pipeline, Consumers, options, time, NullLogger<ReplayWorker>.Instance, FullDelay);
        DeadLetters = new DeadLetters(database, options.ServiceName, time, Replays.Nudge, NullLogger<DeadLetters>.Instance);
    }

    public ParticipantDatabase Database { get; }

    // The jitter's random value pinned at its top, so every backoff is exactly the doubled delay.
    private static double FullDelay() => 1.0;

    public MessagingOptions Options { get; }

    public ConsumerPipeline Pipeline { get; }

    public OutboxRelay Relay { get; }

    public Outbox Outbox { get; }

    public ConsumerRegistry Consumers { get; } = new();

    public ReplayWorker Replays { get; }

    public DeadLetters DeadLetters { get; }

    public static async Task<Service> StartAsync(string name, ParticipantDatabase database, IMessageTransport transport, TimeProvider time, Action<MessagingOptions>? configure = null, IReadOnlyDictionary<string, MessageConsumer>? consumers = null)
    {
        var options = new MessagingOptions { ServiceName = name, Database = database };
        configure?.Invoke(options);
        options.Validate();
        var service = new Service(database, transport, options, time);
        foreach (var (type, consumer) in consumers ?? new Dictionary<string, MessageConsumer>())
        {
            service.Consumers.Add(type, consumer);
        }

        service.Consumers.Resolve(Microsoft.Extensions.DependencyInjection.ServiceCollectionContainerBuilderExtensions.BuildServiceProvider(new Microsoft.Extensions.DependencyInjection.ServiceCollection()));

        await MessagingStarter.EnsureSchemaAsync(database, CancellationToken.None);
        await database.ExecuteDdlAsync(
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, status TEXT NOT NULL); CREATE TABLE IF NOT EXISTS effects (subscriber TEXT NOT NULL, message_id TEXT NOT NULL);",
            CancellationToken.None);
        if (service.Consumers.Types.Count > 0)
        {
            await transport.SubscribeAsync(
                new Subscription(name, service.Consumers.Types),
                (message, ct) => service.Consumers.TryGet(message.Type, out var consumer)
                    ? service.Pipeline.DeliverAsync(message, consumer, ct)
                    : Task.FromResult(DeliveryOutcome.Retry),
                CancellationToken.None);
        }

        return service;
    }

    /// <summary>Writes the handler's effect: one row per handling, no unique key, so a double handling shows as two rows.</summary>
    public static async Task RecordEffectAsync(ParticipantTransaction transaction, string subscriber, string messageId)
    {
        await using var insert = transaction.CreateCommand("INSERT INTO effects (subscriber, message_id) VALUES (@s, @m)", ("s", subscriber), ("m", messageId));
        await insert.ExecuteNonQueryAsync();
    }

    public Task<long> EffectsAsync(string messageId) =>
        ScalarAsync("SELECT COUNT(*) FROM effects WHERE subscriber = @s AND message_id = @m", ("s", Options.ServiceName), ("m", messageId));

    public async Task<long> ScalarAsync(string sql, params (string, object?)[] parameters)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(sql, parameters);
        var value = Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
        await transaction.CommitAsync(CancellationToken.None);
        return value;
    }
}
