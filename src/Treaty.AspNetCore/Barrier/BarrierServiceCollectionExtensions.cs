using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.PreparedTransactions;

namespace Treaty.AspNetCore.Barrier;

/// <summary>Registers the branch barrier.</summary>
public static class BarrierServiceCollectionExtensions
{
    /// <summary>
    /// Registers the branch barrier used by
    /// <see cref="BarrierEndpointRouteBuilderExtensions.MapTreatyBranch"/> (and by
    /// <see cref="PreparedTransactionEndpointRouteBuilderExtensions.MapTreatyPreparedTransactionBranch"/>),
    /// and creates its tables (<c>treaty_barrier</c>, and <c>treaty_prepared</c> for branches in
    /// doubt) in the registered <see cref="ParticipantDatabase"/> (SQLite or PostgreSQL) when the
    /// host starts. Register the <see cref="ParticipantDatabase"/> (a singleton) yourself; a
    /// <see cref="TimeProvider"/> is added when there is none.
    /// </summary>
    public static IServiceCollection AddTreatyBarrier(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(provider => new BranchBarrier(
            provider.GetRequiredService<ParticipantDatabase>(),
            provider.GetRequiredService<TimeProvider>(),
            provider.GetService<ILogger<BranchBarrier>>() ?? NullLogger<BranchBarrier>.Instance));
        services.TryAddSingleton<BranchEndpointRegistry>();
        services.TryAddSingleton(provider => new PreparedTransactionExecutor(
            provider.GetRequiredService<ParticipantDatabase>() as PostgreSqlParticipantDatabase
                ?? throw new InvalidOperationException("PostgreSQL prepared transactions need a PostgreSqlParticipantDatabase."),
            provider.GetRequiredService<TimeProvider>(),
            provider.GetService<ILogger<PreparedTransactionExecutor>>() ?? NullLogger<PreparedTransactionExecutor>.Instance));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, BarrierSchemaInitializer>());
        return services;
    }
}

/// <summary>Creates the barrier's tables before the server takes calls, and checks PostgreSQL can prepare transactions when an endpoint needs it.</summary>
internal sealed class BarrierSchemaInitializer(BranchBarrier barrier, BranchEndpointRegistry endpoints, ILogger<BarrierSchemaInitializer> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await EnsureSchemaAsync(barrier.Database, cancellationToken, logger);
        BarrierLog.SchemaReady(logger, barrier.Database.Dialect);
        if (endpoints.HasPreparedTransactionEndpoints)
        {
            InDoubtLog.PreparedTransactionsReady(logger, await MaxPreparedTransactionsAsync(barrier.Database, cancellationToken));
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Creates <c>treaty_barrier</c> and <c>treaty_prepared</c> when they do not exist.</summary>
    public static async Task EnsureSchemaAsync(ParticipantDatabase database, CancellationToken cancellationToken, ILogger? logger = null)
    {
        await database.ExecuteDdlAsync(BarrierSql.Schema(database.Dialect), cancellationToken);
        await database.ExecuteDdlAsync(PreparedSql.Schema(database.Dialect), cancellationToken);
        if (database.Dialect == SqlDialect.PostgreSql)
        {
            try
            {
                await database.ExecuteDdlAsync(BarrierSql.PostgreSqlRecordedAtIndex, cancellationToken);
            }
            catch (System.Data.Common.DbException e) when (e.SqlState == "55P03")
            {
                // lock_not_available: a prepared transaction holds barrier rows; the retention works without
                // the index (more slowly), and a later start creates it.
                if (logger is not null)
                {
                    BarrierLog.RecordedAtIndexDeferred(logger);
                }
            }
        }
    }

    /// <summary>PostgreSQL's <c>max_prepared_transactions</c>; 0 (the default) fails the start with what to change.</summary>
    private static async Task<int> MaxPreparedTransactionsAsync(ParticipantDatabase database, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var show = transaction.CreateCommand("SELECT current_setting('max_prepared_transactions')");
        var max = int.Parse((string)(await show.ExecuteScalarAsync(cancellationToken))!, CultureInfo.InvariantCulture);
        if (max < 1)
        {
            throw new InvalidOperationException(
                "MapTreatyPreparedTransactionBranch needs PostgreSQL prepared transactions, which this server disables (max_prepared_transactions = 0). " +
                "Set max_prepared_transactions to at least the number of branches this participant may hold prepared at once (it needs a server restart).");
        }

        return max;
    }
}
