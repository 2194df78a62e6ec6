using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Testing;

namespace Treaty.Storage.PostgreSql.Tests;

/// <summary>The shared store behaviour, on a fresh PostgreSQL database per test.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlStoreComplianceTests(PostgresFixture postgres) : StoreComplianceTests
{
    private readonly List<PostgreSqlTransactionStore> _opened = [];
    private string? _connectionString;

    protected override async Task<ITransactionStore> CreateStoreAsync()
    {
        _connectionString = await postgres.Server.CreateDatabaseAsync("compliance");
        return Open();
    }

    protected override async Task<ITransactionStore> ReopenStoreAsync()
    {
        if (_opened.Count > 0)
        {
            await _opened[^1].DisposeAsync();
        }

        return Open();
    }

    protected override Task<ITransactionStore> OpenAnotherInstanceAsync() => Task.FromResult<ITransactionStore>(Open());

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        foreach (var store in _opened)
        {
            await store.DisposeAsync();
        }
    }

    private PostgreSqlTransactionStore Open()
    {
        var store = new PostgreSqlTransactionStore(
            new PostgreSqlStoreOptions { ConnectionString = _connectionString },
            NullLogger<PostgreSqlTransactionStore>.Instance);
        _opened.Add(store);
        return store;
    }
}
