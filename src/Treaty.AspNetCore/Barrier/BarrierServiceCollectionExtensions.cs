using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Barrier;

/// <summary>Registers the branch barrier.</summary>
public static class BarrierServiceCollectionExtensions
{
    /// <summary>
    /// Registers the branch barrier used by
    /// <see cref="BarrierEndpointRouteBuilderExtensions.MapTreatyBranch"/>, and creates its table
    /// (<c>treaty_barrier</c>) in the registered <see cref="ParticipantDatabase"/> (SQLite or
    /// PostgreSQL) when the host starts. Register the <see cref="ParticipantDatabase"/> (a
    /// singleton) yourself; a <see cref="TimeProvider"/> is added when there is none.
    /// </summary>
    public static IServiceCollection AddTreatyBarrier(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(provider => new BranchBarrier(
            provider.GetRequiredService<ParticipantDatabase>(),
            provider.GetRequiredService<TimeProvider>(),
            provider.GetService<ILogger<BranchBarrier>>() ?? NullLogger<BranchBarrier>.Instance));
        services.AddHostedService<BarrierSchemaInitializer>();
        return services;
    }
}

/// <summary>Creates the barrier table before the server takes calls.</summary>
internal sealed class BarrierSchemaInitializer(BranchBarrier barrier, ILogger<BarrierSchemaInitializer> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await EnsureSchemaAsync(barrier.Database, cancellationToken);
        BarrierLog.SchemaReady(logger, barrier.Database.Dialect);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Creates <c>treaty_barrier</c> when it does not exist.</summary>
    public static Task EnsureSchemaAsync(ParticipantDatabase database, CancellationToken cancellationToken) =>
        database.ExecuteDdlAsync(BarrierSql.Schema(database.Dialect), cancellationToken);
}
