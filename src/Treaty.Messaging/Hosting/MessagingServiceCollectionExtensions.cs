using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Embedded;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging;

/// <summary>Registers Treaty.Messaging.</summary>
public static class MessagingServiceCollectionExtensions
{
    /// <summary>
    /// Registers the outbox (<see cref="Outbox"/>), its relay, the inbox pipeline, the dead letters
    /// (<see cref="DeadLetters"/>) and, unless another transport is chosen on the returned builder,
    /// the embedded transport. The tables are created in <see cref="MessagingOptions.Database"/>
    /// when the host starts; then the service's handlers are subscribed.
    /// </summary>
    public static TreatyMessagingBuilder AddTreatyMessaging(this IServiceCollection services, Action<MessagingOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new MessagingOptions();
        configure(options);
        options.Validate();
        var builder = new TreatyMessagingBuilder(services);

        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton(options);
        services.AddSingleton(builder.Consumers);
        services.AddSingleton(builder.Routes);
        services.AddSingleton<EmbeddedDispatcher>();
        // TryAdd: a transport registered before (services.UseRabbitMq, which replaces whatever is
        // there when it comes after) wins over the builder's default.
        services.TryAddSingleton<IMessageTransport>(provider => builder.TransportFactory(provider));
        services.AddSingleton(provider => new ConsumerPipeline(Database(provider), options, provider.GetRequiredService<TimeProvider>(), Logger<ConsumerPipeline>(provider)));
        services.AddSingleton(provider => new OutboxRelay(Database(provider), provider.GetRequiredService<IMessageTransport>(), options, provider.GetRequiredService<TimeProvider>(), Logger<OutboxRelay>(provider)));
        services.AddSingleton(provider => new ReplayWorker(provider.GetRequiredService<ConsumerPipeline>(), builder.Consumers, options, provider.GetRequiredService<TimeProvider>(), Logger<ReplayWorker>(provider)));
        services.AddSingleton(provider =>
        {
            var relay = provider.GetRequiredService<OutboxRelay>();
            // With ReportTo, each event's report row is written with it (null: this service does not report).
            return new Outbox(options.ServiceName, provider.GetRequiredService<TimeProvider>(), relay.Nudge, reports: provider.GetService<ReportWriter>());
        });
        services.AddSingleton(provider =>
        {
            var worker = provider.GetRequiredService<ReplayWorker>();
            return new DeadLetters(Database(provider), options.ServiceName, provider.GetRequiredService<TimeProvider>(), worker.Nudge, Logger<DeadLetters>(provider));
        });

        // Order matters: tables first, then the subscriptions, then the relay and the replays.
        services.AddSingleton<IHostedService>(provider => new MessagingStarter(
            provider,
            Database(provider), provider.GetRequiredService<IMessageTransport>(), provider.GetRequiredService<ConsumerPipeline>(), builder.Consumers, Logger<MessagingStarter>(provider)));
        services.AddSingleton<IHostedService>(provider => provider.GetRequiredService<OutboxRelay>());
        services.AddSingleton<IHostedService>(provider => provider.GetRequiredService<ReplayWorker>());
        return builder;
    }

    // The database given in the options, else the service's registered ParticipantDatabase (the one the barrier uses).
    private static ParticipantDatabase Database(IServiceProvider provider) =>
        provider.GetRequiredService<MessagingOptions>().Database ?? provider.GetRequiredService<ParticipantDatabase>();

    private static ILogger<T> Logger<T>(IServiceProvider provider) => provider.GetService<ILogger<T>>() ?? NullLogger<T>.Instance;
}

/// <summary>Chooses the handlers and the transport of Treaty.Messaging.</summary>
public sealed class TreatyMessagingBuilder
{
    internal TreatyMessagingBuilder(IServiceCollection services)
    {
        Services = services;
        TransportFactory = provider => new EmbeddedTransport(
            new HttpClient { Timeout = TimeSpan.FromSeconds(30) },
            Routes,
            provider.GetRequiredService<EmbeddedDispatcher>(),
            provider.GetService<ILogger<EmbeddedTransport>>(),
            ownsHttpClient: true);
    }

    /// <summary>The service collection, for transports' own extension methods.</summary>
    public IServiceCollection Services { get; }

    internal ConsumerRegistry Consumers { get; } = new();

    internal EmbeddedRoutes Routes { get; } = new();

    internal Func<IServiceProvider, IMessageTransport> TransportFactory { get; private set; }

    /// <summary>Handles messages of <paramref name="type"/> with <paramref name="consumer"/>, in the inbox's transaction. One handler per type.</summary>
    public TreatyMessagingBuilder Subscribe(string type, MessageConsumer consumer)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        return Subscribe(type, _ => consumer);
    }

    /// <summary>
    /// Handles messages of <paramref name="type"/> with the handler <paramref name="factory"/> makes
    /// from the container when the host starts (to reach the <see cref="Outbox"/> for follow-up
    /// events, say). One handler per type.
    /// </summary>
    public TreatyMessagingBuilder Subscribe(string type, Func<IServiceProvider, MessageConsumer> factory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        ArgumentNullException.ThrowIfNull(factory);
        Consumers.Add(type, factory);
        return this;
    }

    /// <summary>The embedded transport (the default): says where each type's subscribers listen (<c>MapTreatyMessaging</c>).</summary>
    public TreatyMessagingBuilder UseEmbeddedTransport(Action<EmbeddedRoutes> routes)
    {
        ArgumentNullException.ThrowIfNull(routes);
        routes(Routes);
        return this;
    }

    /// <summary>Another transport (RabbitMQ's <c>UseRabbitMq</c> calls this), created once from the container.</summary>
    public TreatyMessagingBuilder UseTransport(Func<IServiceProvider, IMessageTransport> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        TransportFactory = factory;
        return this;
    }
}

/// <summary>Creates the tables, then subscribes this service's handlers with the transport; unsubscribes on stop.</summary>
internal sealed class MessagingStarter(
    IServiceProvider services,
    ParticipantDatabase database,
    IMessageTransport transport,
    ConsumerPipeline pipeline,
    ConsumerRegistry consumers,
    ILogger<MessagingStarter> logger) : IHostedService
{
    private IAsyncDisposable? _subscription;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await EnsureSchemaAsync(database, cancellationToken);
        MessagingLog.SchemaReady(logger, database.Dialect);
        consumers.Resolve(services);
        if (consumers.Types.Count > 0)
        {
            _subscription = await transport.SubscribeAsync(
                new Subscription(pipeline.Subscriber, consumers.Types),
                (message, ct) => consumers.TryGet(message.Type, out var consumer)
                    ? pipeline.DeliverAsync(message, consumer, ct)
                    : Task.FromResult(DeliveryOutcome.Retry),
                cancellationToken);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_subscription is not null)
        {
            await _subscription.DisposeAsync();
        }
    }

    public static Task EnsureSchemaAsync(ParticipantDatabase database, CancellationToken cancellationToken) =>
        database.ExecuteDdlAsync(MessagingSql.Schema(database.Dialect), cancellationToken);
}
